"""`recstack train` end to end on a tiny dataset: overfitting, the run dir, the report, exact
resume (also after kill -9), 2-process DDP with gloo, and bad configs refused up front."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from terminal import default_sigint, wait_for
from train_configs import RETRIEVAL, SASREC, logged_and_true_val_ndcg, write_config

from recstack.cli import main


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("task", [SASREC, RETRIEVAL], ids=["sasrec", "two_tower"])
def test_overfits_a_tiny_dataset_and_writes_the_run_dir(tmp_path, chain_dir, task):
    config = write_config(tmp_path, chain_dir, task)
    stop_when_fitted = ["--early_stopping.stopping_threshold", "0.99"]  # val NDCG@10
    assert main(["train", "--config", str(config), "--baselines", "true", *stop_when_fitted]) == 0
    run = tmp_path / "run"
    report = json.loads((run / "metrics.json").read_text())
    assert report["test"]["hr@10"] >= 0.95, report["test"]
    assert report["valid"]["hr@10"] >= 0.95
    assert set(report["baselines"]) == {"MostPop", "EASE", "Markov"}
    assert report["test"]["ndcg@10"] > report["baselines"]["MostPop"]["ndcg@10"]
    assert report["segments"]["activity"]
    assert report["history"] and report["history"][0]["wall_s"] > 0
    for name in (
        "config.yaml",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "logs/metrics.csv",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("batches", ["auto", "on"], ids=["dataloader", "device_batches"])
def test_resume_from_a_checkpoint_is_exact(tmp_path, chain_dir, batches):
    # dropout: the RNG must resume too; EMA: its running average; the lr warm-up: its position
    dropout = ["--model.init_args.model.dropout", "0.2", "--model.init_args.optim.ema_decay", "0.9",
               "--model.init_args.optim.warmup_steps", "40", "--data.device_batches", batches]  # fmt: skip
    straight = write_config(tmp_path / "a", chain_dir, max_epochs=4)
    assert main(["train", "--config", str(straight), *dropout]) == 0
    halves = write_config(tmp_path / "b", chain_dir, max_epochs=2)
    assert main(["train", "--config", str(halves), *dropout]) == 0
    resumed = ["--trainer.max_epochs", "4", "--ckpt_path", "last"]
    assert main(["train", "--config", str(halves), *dropout, *resumed]) == 0
    a = _weights(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt")
    b = _weights(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and any(key.startswith("ema.") for key in a)
    resumed_ckpt = torch.load(
        tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", weights_only=False
    )
    [warmup] = resumed_ckpt["lr_schedulers"]  # still warming up at the end: it spans the resume
    assert warmup["last_epoch"] == resumed_ckpt["global_step"] < 40
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _recstack() -> str:
    return str(Path(sys.executable).parent / "recstack")


def test_resume_after_kill_9_is_exact(tmp_path, chain_dir):
    """Kill the process mid-run; `--ckpt_path last` continues to the same weights."""
    slow = {"max_epochs": 6, "limit_train_batches": 1.0}
    # the reference runs in a process of its own too: the pytest process's state (threads,
    # libraries loaded by earlier tests) must not decide whether the weights match bit for bit
    reference = write_config(tmp_path / "ref", chain_dir, **slow)

    def train(config: Path) -> list[str]:
        return [_recstack(), "train", "--config", str(config), "--data.batch_size", "2"]

    subprocess.run(train(reference), check=True, capture_output=True, timeout=300)
    command = train(write_config(tmp_path / "kill", chain_dir, **slow))
    last = tmp_path / "kill" / "run" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(last, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    epoch = torch.load(last, weights_only=False)["epoch"]
    assert epoch < 5, "the run finished before it could be killed; make it slower"
    subprocess.run([*command, "--ckpt_path", "last"], check=True, capture_output=True, timeout=300)
    a = _weights(tmp_path / "ref" / "run" / "checkpoints" / "last.ckpt")
    b = _weights(last)
    for key in a:
        torch.testing.assert_close(
            a[key], b[key], rtol=0, atol=0, msg=f"{key} (killed after epoch {epoch})"
        )


def test_ctrl_c_stops_at_a_batch_end_and_says_how_to_resume(tmp_path, chain_dir):
    """Ctrl-C mid-run: exit 2 with the resume hint (Lightning's own sys.exit(1) used to end
    the process before it), and `--ckpt_path last` finishes the run."""
    config = write_config(tmp_path, chain_dir, max_epochs=30, limit_train_batches=1.0)
    command = [_recstack(), "train", "--config", str(config), "--data.batch_size", "2"]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=default_sigint,
    )  # fmt: skip
    wait_for(last, proc)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, output
    assert "training interrupted; resume with --ckpt_path last" in output, output
    assert "Traceback" not in output
    done = subprocess.run([*command, "--ckpt_path", "last"], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stdout.decode()[-2000:]


def test_two_process_ddp_with_gloo_gathers_metrics_over_all_users(tmp_path, chain_dir):

    config = write_config(tmp_path, chain_dir, max_epochs=2, devices=2, strategy="ddp")
    proc = subprocess.run(
        [_recstack(), "train", "--config", str(config)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged, true = logged_and_true_val_ndcg(
        tmp_path / "run" / "checkpoints" / "last.ckpt", chain_dir
    )
    assert logged == pytest.approx(true, abs=1e-5)
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--model.init_args.loss.kind", "bogus", "model.loss.kind"),
        ("--model.init_args.model.dim", "-8", "sasrec dim must be >= 1"),
        ("--data.dataset", "/no/such/dir", "recstack data prepare"),
        ("--model.init_args.optim.lr", "0", "lr > 0"),
        ("--model.init_args.optim.warmup_steps", "-1", "warmup_steps must be >= 0"),
        # a config from before the SASRec window was renamed history_len
        ("--model.init_args.model.max_len", "50", "Option 'max_len' is not accepted"),
    ],
)
def test_bad_config_values_fail_before_training(tmp_path, chain_dir, capsys, flag, value, message):
    config = write_config(tmp_path, chain_dir)
    assert main(["train", "--config", str(config), flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_diverging_loss_stops_training_with_a_clear_error(tmp_path, chain_dir, capsys):
    config = write_config(tmp_path, chain_dir, max_epochs=5)
    assert main(["train", "--config", str(config), "--model.optim.lr", "1e12"]) == 2
    err = capsys.readouterr().err
    assert "training loss became nan" in err and "lower model.optim.lr" in err, err


def test_train_help_lists_the_sections(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--run_dir" in out and "--ckpt_path" in out and "--trainer.max_epochs" in out


def test_the_report_counts_epochs_not_validations(tmp_path, chain_dir):
    config = write_config(tmp_path, chain_dir, max_epochs=4, check_val_every_n_epoch=2)
    assert main(["train", "--config", str(config)]) == 0
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [entry["epoch"] for entry in report["history"]] == [1, 3]  # validated twice
    assert report["epochs_trained"] == 4
