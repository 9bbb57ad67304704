"""`recstack tune` end to end on a tiny dataset: pruning, kill -9 and resume, two workers on
one SQLite study, failed trials recorded with their reason, and best.yaml reproduced by
`recstack train`."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from terminal import default_sigint, wait_for
from train_configs import write_config

from recstack.cli import main
from recstack.training.tuning.study import (
    FAIL_REASON,
    RETRY_OF,
    RETRY_REASON,
    finished_trials,
    lost_trials,
)

# lr 1e-5 learns nothing in a few epochs, so the median pruner stops such trials; with this
# sampler seed the first sampled trial (trial 1) draws it.
SEARCH = {
    "sampler": {"kind": "random", "seed": 0},
    "pruner": {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 2},
    "fixed": {"trainer.max_epochs": 8},
    "params": {"model.optim.lr": {"type": "categorical", "choices": [0.01, 0.00001]}},
}


def setup_study(tmp_path: Path, chain_dir: Path, search: dict = SEARCH) -> list[str]:
    config = write_config(tmp_path, chain_dir)
    search_path = tmp_path / "search.yaml"
    search_path.write_text(yaml.safe_dump(search, sort_keys=False))
    return ["--config", str(config), "--search", str(search_path), "--study", "s"]


def tune_command(args: list[str], out: Path, n_trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recstack.cli", "tune", *args, "--out", str(out),
            "--n-trials", str(n_trials), *extra]  # fmt: skip


def load(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}")


def test_study_prunes_resumes_after_kill_and_best_yaml_reproduces(tmp_path, chain_dir):
    args = setup_study(tmp_path, chain_dir)
    out = tmp_path / "study"
    worker = subprocess.Popen(
        tune_command(args, out, 3), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for(out / "trials" / "0001" / "trial.yaml", worker)  # trial 0 done, trial 1 started
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    study = load(out)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]

    assert main(["tune", *args, "--out", str(out), "--n-trials", "3"]) == 0
    study = load(out)
    trials = study.trials
    assert finished_trials(study) == 3
    assert [t.number for t in trials] == [0, 1, 2, 3]  # numbering continues
    lost = trials[1]
    assert lost.state == TrialState.FAIL and set(lost_trials(study)) == {1}
    retry = trials[2]
    assert retry.user_attrs[RETRY_OF] == 1 and retry.params == lost.params
    assert "stopped" in retry.user_attrs[RETRY_REASON]
    assert retry.params["model.optim.lr"] == 0.00001
    assert retry.state == TrialState.PRUNED  # worse than trial 0 after the warm-up epochs
    assert len(retry.intermediate_values) < 8
    assert not (out / "trials" / "0002" / "checkpoints").exists()  # pruned: no checkpoints
    assert trials[0].user_attrs["default_config"] and trials[0].value > 0.9

    report = json.loads((out / "report.json").read_text())
    best = report["best"]
    assert best["number"] == study.best_trial.number
    assert best["test"]["ndcg@10"] > 0.9  # test metrics for the best trial only
    assert set(report["states"]) >= {"complete", "pruned", "fail"}
    for name in ("optimization_history", "intermediate_values"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    assert "| trial | state |" in (out / "report.md").read_text()
    assert (out / "trials.csv").read_text().count("\n") == 5

    # best.yaml is a complete training config that reproduces the trial's validation NDCG@10
    best_yaml = yaml.safe_load((out / "best.yaml").read_text())
    best_yaml["run_dir"] = str(tmp_path / "reproduced")
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(best_yaml))
    assert main(["train", "--config", str(tmp_path / "best.yaml")]) == 0
    metrics = json.loads((tmp_path / "reproduced" / "metrics.json").read_text())
    assert metrics["valid_during_training"]["ndcg@10"] == pytest.approx(
        best["val_ndcg@10"], abs=1e-3
    )


def ctrl_c_mid_trial(tmp_path: Path, chain_dir: Path, delay_s: float = 0.0):
    """A 2-trial study sent Ctrl-C `delay_s` after trial 0's first checkpoint (mid-training):
    (study dir, exit code, output)."""
    search = {**SEARCH, "fixed": {"trainer.max_epochs": 30}, "pruner": {"kind": "none"}}
    args = setup_study(tmp_path, chain_dir, search)
    out = tmp_path / "study"
    worker = subprocess.Popen(
        tune_command(args, out, 2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=default_sigint,
    )  # fmt: skip
    wait_for(out / "trials" / "0000" / "checkpoints" / "last.ckpt", worker)
    time.sleep(delay_s)
    worker.send_signal(signal.SIGINT)
    output, _ = worker.communicate(timeout=120)
    return out, worker.returncode, output


def test_ctrl_c_requeues_the_running_trial(tmp_path, chain_dir):
    out, returncode, output = ctrl_c_mid_trial(tmp_path, chain_dir)
    assert returncode == 130, output
    assert "run the same command again" in output and "Traceback" not in output
    trials = load(out).trials
    assert trials[0].state == TrialState.FAIL
    assert trials[1].state == TrialState.WAITING and trials[1].user_attrs[RETRY_OF] == 0
    assert trials[1].system_attrs["fixed_params"] == trials[0].params  # queued again


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", [0.1 * i for i in range(12)])
def test_ctrl_c_at_any_moment_stops_the_study(tmp_path, chain_dir, delay_s):
    """Ctrl-C landing anywhere in a trial stops the study. Before training/interrupt.py, one
    of these 12 (delay 1.0 s) was dropped in a finalizer and the study ran on to the end."""
    _, returncode, output = ctrl_c_mid_trial(tmp_path, chain_dir, delay_s)
    assert returncode == 130, output


def test_two_workers_share_one_sqlite_study(tmp_path, chain_dir):
    search = {**SEARCH, "params": {"model.optim.lr": {"type": "float", "low": 0.003, "high": 0.03}}}
    args = setup_study(tmp_path, chain_dir, search)
    out = tmp_path / "study"
    first = subprocess.Popen(
        tune_command(args, out, 6, "--worker-id", "0"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for(out / "trials" / "0000" / "trial.yaml", first)  # the study exists
    second = subprocess.Popen(
        tune_command(args, out, 6, "--worker-id", "1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for worker in (first, second):
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output
    study = load(out)
    assert finished_trials(study) >= 6
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2  # both workers ran trials
    assert len({t.number for t in study.trials}) == len(study.trials)
    params = [t.params["model.optim.lr"] for t in study.trials]
    assert len(set(params)) == len(params)  # workers did not replay each other's draws


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, chain_dir):
    # n_heads 3 does not divide dim 32: every sampled trial fails; the default trial runs
    search = {
        **SEARCH,
        "params": {"model.model.n_heads": {"type": "categorical", "choices": [2, 3]}},
        "sampler": {"kind": "random", "seed": 0},
    }
    args = setup_study(tmp_path, chain_dir, search)
    out = tmp_path / "study"
    assert main(["tune", *args, "--out", str(out), "--n-trials", "3"]) == 0
    study = load(out)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed, [t.params for t in study.trials]
    for trial in failed:
        assert "divisible by n_heads" in trial.user_attrs[FAIL_REASON]
        assert (out / "trials" / f"{trial.number:04d}" / "error.txt").is_file()
    assert study.best_trial.params["model.model.n_heads"] == 2
    assert "divisible by n_heads" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"params": {"model.optim.learning_rate": {"type": "float", "low": 0.1, "high": 1.0}}},
         "model.optim.learning_rate"),
        ({"fixed": {"trainer.max_epochs": "many"}}, "invalid config"),
    ],
)  # fmt: skip
def test_bad_keys_are_refused_before_any_trial(tmp_path, chain_dir, capsys, edit, message):
    args = setup_study(tmp_path, chain_dir, {**SEARCH, **edit})
    out = tmp_path / "study"
    assert main(["tune", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "trials").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--n-trials", "-1"], "n_trials"), (["--timeout", "0"], "--timeout must be"),
     (["--worker-id", "-2"], "worker_id")],
)  # fmt: skip
def test_bad_numbers_are_refused_in_one_line(tmp_path, chain_dir, capsys, flags, message):
    args = setup_study(tmp_path, chain_dir)
    assert main(["tune", *args, "--out", str(tmp_path / "study"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "study").exists()


def test_joining_with_another_search_space_is_refused(tmp_path, chain_dir, capsys):
    args = setup_study(tmp_path, chain_dir)
    out = tmp_path / "study"
    assert main(["tune", *args, "--out", str(out), "--n-trials", "0"]) == 0
    other = {**SEARCH, "fixed": {"trainer.max_epochs": 9}}
    args = setup_study(tmp_path, chain_dir, other)
    assert main(["tune", *args, "--out", str(out), "--n-trials", "1"]) == 2
    assert "another training config or search space" in capsys.readouterr().err
    assert os.path.exists(out / "study.db")


@pytest.mark.integration
def test_workers_share_a_postgresql_study(tmp_path, chain_dir, postgres_url):
    """What several machines do: each worker has its own study dir, one shared storage."""
    search = {
        **SEARCH,
        "pruner": {"kind": "none"},
        "fixed": {"trainer.max_epochs": 10},
        "params": {"model.optim.lr": {"type": "float", "low": 0.003, "high": 0.03}},
    }
    args = setup_study(tmp_path, chain_dir, search)
    workers = [
        subprocess.Popen(
            tune_command(
                args, tmp_path / f"machine{i}", 6, "--storage", postgres_url, "--worker-id", str(i)
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output
    study = optuna.load_study(study_name="s", storage=postgres_url)
    assert finished_trials(study) >= 6
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2, [
        (t.number, t.user_attrs["pid"]) for t in study.trials
    ]
    defaults = [t for t in study.trials if t.user_attrs.get("default_config")]
    assert len(defaults) == 1  # the base config (lr 0.01) was queued once, not once per worker
    assert defaults[0].params == {"model.optim.lr": 0.01}
    # each machine's report names the same best trial; its test metrics come from the
    # machine that holds its checkpoint
    best = study.best_trial.number
    for i in range(2):
        report = json.loads((tmp_path / f"machine{i}" / "report.json").read_text())
        assert report["best"]["number"] == best
    assert any("test" in json.loads((tmp_path / f"machine{i}" / "report.json").read_text())["best"]
               for i in range(2))  # fmt: skip


def test_a_trial_whose_worker_elsewhere_went_silent_is_requeued(tmp_path, chain_dir):
    """A worker on another machine died mid-trial: its heartbeat stops, and after the grace
    period the next worker to start a trial marks it failed and queues its params again."""
    args = setup_study(tmp_path, chain_dir)
    out = tmp_path / "study"
    assert main(["tune", *args, "--out", str(out), "--n-trials", "0"]) == 0  # create the study
    study = load(out)
    orphan = study.ask(
        {"model.optim.lr": optuna.distributions.CategoricalDistribution([0.01, 1e-5])}
    )
    orphan.set_user_attr("host", "another-machine")
    orphan.set_user_attr("pid", 1)
    study._storage.record_heartbeat(orphan._trial_id)
    with sqlite3.connect(out / "study.db") as db:  # its last heartbeat: an hour ago
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour')")

    assert main(["tune", *args, "--out", str(out), "--n-trials", "2"]) == 0
    trials = load(out).trials
    lost = trials[orphan.number]
    assert lost.state == TrialState.FAIL
    retry = next(t for t in trials if t.user_attrs.get(RETRY_OF) == orphan.number)
    assert retry.user_attrs[RETRY_REASON] == "no heartbeat from its worker"
    assert retry.params == {"model.optim.lr": 0.01} and retry.state == TrialState.COMPLETE


@pytest.mark.integration
def test_a_machine_lost_mid_trial_is_requeued_on_postgresql(tmp_path, chain_dir, postgres_url):
    """The lost-machine path on the storage that several machines share: a trial whose
    heartbeat stopped (by PostgreSQL's clock, not the workers') is failed and re-queued by
    the next worker, on any machine."""
    import psycopg

    args = setup_study(tmp_path, chain_dir, {**SEARCH, "fixed": {"trainer.max_epochs": 2}})
    args[args.index("--study") + 1] = "lost-machine"  # the module's server has study "s" too
    out, storage = tmp_path / "study", ["--storage", postgres_url]
    assert main(["tune", *args, "--out", str(out), *storage, "--n-trials", "0"]) == 0
    study = optuna.load_study(study_name="lost-machine", storage=postgres_url)
    orphan = study.ask(
        {"model.optim.lr": optuna.distributions.CategoricalDistribution([0.01, 1e-5])}
    )
    orphan.set_user_attr("host", "another-machine")
    orphan.set_user_attr("pid", 1)
    study._storage.record_heartbeat(orphan._trial_id)
    with psycopg.connect(postgres_url) as db:  # its last heartbeat: an hour ago
        db.execute(
            "UPDATE trial_heartbeats SET heartbeat = heartbeat - interval '1 hour' "
            "WHERE trial_id = %s",
            (orphan._trial_id,),
        )

    assert main(["tune", *args, "--out", str(out), *storage, "--n-trials", "2"]) == 0
    trials = optuna.load_study(study_name="lost-machine", storage=postgres_url).trials
    assert trials[orphan.number].state == TrialState.FAIL
    retry = next(t for t in trials if t.user_attrs.get(RETRY_OF) == orphan.number)
    assert retry.user_attrs[RETRY_REASON] == "no heartbeat from its worker"
    assert retry.params == orphan.params and retry.state == TrialState.COMPLETE
