"""`recstack monitor` on the synthetic generator: traffic drawn from the training data passes,
a planted shift (new items take over, heavy new users, the tail gains, scores move) is flagged
by the metrics that measure it; bad input is one line and exit 2; `recstack retrain` with a
trigger does nothing without drift."""

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from service_config import free_port, write_serve_config

from recstack.cli import main
from recstack.data_profile import PROFILE, DataProfile, dataset_profile
from recstack.dataset_dir import load_dataset
from recstack.serving.event_log import EventLog

ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400
WINDOW_DAY = 1_767_225_600  # 2026-01-01 UTC, after the synthetic log (2024)
N_NEW_ITEMS = 20


def sasrec_artifact(root: Path, dataset: Path) -> Path:
    """A SASRec trained for two batches on `dataset` (barely more than its random init), exported
    by `recstack export`: a valid artifact in the time of one ONNX export."""
    model = {"history_len": 20, "dim": 16, "n_layers": 1, "n_heads": 1}
    config = {
        "seed_everything": 0,
        "run_dir": str(root / "run"),
        "baselines": False,
        "trainer": {"max_epochs": 1, "limit_train_batches": 2, "accelerator": "cpu",
                    "devices": 1, "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"class_path": "recstack.training.tasks.next_item.NextItemTask",
                  "init_args": {"model": model}},
        "data": {"dataset": str(dataset), "batch_size": 128},
    }  # fmt: skip
    (root / "train.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(root / "train.yaml")]) == 0
    out = root / "artifact"
    assert (
        main(["export", "--ckpt", str(root / "run/checkpoints/best.ckpt"), "--out", str(out)]) == 0
    )
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A small synthetic dataset and a SASRec artifact exported from it."""
    from recstack.datasets.prepare import prepare
    from recstack.datasets.synth import synthesize

    root = tmp_path_factory.mktemp("monitor")
    synthesize(root / "raw", users=400, items=300, events=20_000, seed=0, progress=False)
    prepare(source=f"synth:{root / 'raw'}", out=root / "data", quiet=True)
    artifact = sasrec_artifact(root, root / "data")
    data = load_dataset(root / "data")
    frame = data.interactions.join(data.users, on="user_idx").join(data.items, on="item_idx")
    frame = frame.select(pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String), "ts")
    return {"root": root, "data": root / "data", "artifact": artifact, "frame": frame}


def arm(user: str) -> str:
    return "model" if zlib.crc32(user.encode()) % 2 else "popularity"


def impressions(users, items, weights, rng, day: int, shift: float, clicked=None) -> list:
    """One list of 10 impressions per user (one request_id): the items the user clicks that day,
    the rest drawn by training popularity; a score in the context (normal, mean `shift`) and
    the user's arm."""
    events = []
    for user in users:
        shown = (clicked or {}).get(user, [])
        shown = [*shown, *rng.choice(items, size=max(10 - len(shown), 0), p=weights)]
        events += [
            {"user_id": user, "item_id": str(item), "type": "impression", "arm": arm(user),
             "ts": day + int(rng.integers(0, DAY)), "request_id": f"{day}-{user}",
             "context": {"score": float(rng.normal(shift))}}
            for item in shown
        ]  # fmt: skip
    return events


def traffic(frame: pl.DataFrame, shifted: bool, seed: int = 1) -> list[dict]:
    """A day of traffic after the data: each training user replays one of their own days (the
    events of one UTC day, same items, same time of day; one in ten a click on an item of the
    user's list that day, the rest views), with impressions that day and the day before. Shifted: half the users are new and view 30 items a day, 30 % of the views go to
    new items (the first most), the other views to uniformly drawn catalogue items, and the
    scores of the window's impressions move up by 1.5."""
    rng = np.random.default_rng(seed)
    days = frame.with_columns((pl.col("ts") // DAY).alias("day"))
    chosen = days.select("user_id", "day").unique().sample(fraction=1.0, shuffle=True, seed=seed)
    chosen = chosen.unique("user_id", keep="first", maintain_order=True)
    replay = days.join(chosen, on=["user_id", "day"]).sort("user_id", "ts")
    counts = frame.group_by("item_id").len()
    items, weights = counts["item_id"].to_list(), (counts["len"] / counts["len"].sum()).to_numpy()
    users = sorted(chosen["user_id"].to_list())
    events = [
        {"user_id": u, "item_id": i, "type": "view", "ts": WINDOW_DAY + t % DAY}
        for u, i, t in replay.select("user_id", "item_id", "ts").iter_rows()
    ]
    if shifted:
        kept = set(users[::2])
        events = [e for e in events if e["user_id"] in kept]
        new_users = [f"new-user-{n}" for n in range(len(users) - len(kept))]
        for user in new_users:
            events += [
                {"user_id": user, "item_id": "", "type": "view",
                 "ts": WINDOW_DAY + int(rng.integers(0, DAY))}
                for _ in range(30)
            ]  # fmt: skip
        new_weights = 1 / np.arange(1, N_NEW_ITEMS + 1)
        for event in events:
            if rng.random() < 0.3:
                n = rng.choice(N_NEW_ITEMS, p=new_weights / new_weights.sum())
                event["item_id"] = f"new-item-{n}"
            else:
                event["item_id"] = str(rng.choice(items))
        users = sorted(kept) + new_users
    clicked: dict[str, list[str]] = {}
    for event in events:
        user = event["user_id"]
        event |= {"arm": arm(user), "type": "view"}
        if rng.random() < 0.1:  # a click on an item of the user's list that day
            event |= {"type": "click", "request_id": f"{WINDOW_DAY}-{user}"}
            clicked.setdefault(user, []).append(event["item_id"])
    events += impressions(users, items, weights, rng, WINDOW_DAY - DAY, 0.0)
    shift = 1.5 if shifted else 0.0
    events += impressions(users, items, weights, rng, WINDOW_DAY, shift, clicked)
    return events


def write_log(directory: Path, events: list[dict]) -> Path:
    with EventLog(directory) as log:
        log.append(events)
    return directory


def run(args: list[str], capsys) -> tuple[int, str]:
    code = main(["monitor", *map(str, args)])
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def monitor_args(world: dict, log: Path, out: Path) -> list:
    return ["--events", log, "--artifact", world["artifact"], "--dataset", world["data"],
            "--out", out, "--config", ROOT / "configs" / "monitor" / "default.yaml"]  # fmt: skip


def test_export_copies_the_data_profile_and_computes_it_for_older_datasets(world):
    dataset = json.loads((world["data"] / "manifest.json").read_text())
    artifact = json.loads((world["artifact"] / "manifest.json").read_text())
    assert artifact[PROFILE] == dataset[PROFILE]
    profile = DataProfile.model_validate(dataset[PROFILE])
    assert profile.item_popularity.total == 20_000
    assert abs(sum(profile.user_activity.share) - 1) < 1e-9
    older = {k: v for k, v in dataset.items() if k != PROFILE}  # before profiles existed
    assert dataset_profile(world["data"], older, 300) == profile


def test_traffic_drawn_from_the_training_data_is_not_flagged(world, tmp_path, capsys):
    log = write_log(tmp_path / "events", traffic(world["frame"], shifted=False))
    code, err = run(monitor_args(world, log, tmp_path / "report"), capsys)
    report = json.loads((tmp_path / "report" / "drift.json").read_text())
    assert code == 0, err
    assert report["breached"] == [] and "no drift" in err
    inp, out = report["input"], report["output"]
    assert inp["judged"] and out["judged"]
    assert inp["item_popularity"]["psi"] < 0.1 and inp["user_activity"]["psi"] < 0.1
    assert inp["unknown_items"]["share"] == 0 and inp["unknown_users"]["share"] == 0
    assert out["scores"]["model"]["psi"] < 0.1 and out["unknown_items"] == 0
    assert 0 < out["coverage"] <= 1
    assert set(report["arms"]) == {"model", "popularity"}
    assert all(0 < arm["ctr"] < 0.2 for arm in report["arms"].values())
    assert (tmp_path / "report" / "drift.png").stat().st_size > 10_000


def test_a_planted_shift_is_flagged_by_the_metrics_that_measure_it(world, tmp_path, capsys):
    log = write_log(tmp_path / "events", traffic(world["frame"], shifted=True))
    code, err = run(monitor_args(world, log, tmp_path / "report"), capsys)
    report = json.loads((tmp_path / "report" / "drift.json").read_text())
    assert code == 3, err
    assert set(report["breached"]) == {
        "item_popularity_psi",
        "user_activity_psi",
        "unknown_item_share",
        "unknown_user_share",
        "score_psi",
    }
    inp = report["input"]
    assert 0.25 < inp["unknown_items"]["share"] < 0.35
    assert inp["unknown_items"]["distinct"] == N_NEW_ITEMS
    assert inp["unknown_items"]["top"][0]["item_id"] == "new-item-0"
    assert inp["unknown_users"]["share"] == pytest.approx(0.5, abs=0.01)
    assert report["output"]["popularity_lift"] is not None
    assert "drift" in err and "BREACHED" in err


def test_without_a_score_or_a_dataset_those_figures_are_unavailable(world, tmp_path, capsys):
    events = traffic(world["frame"], shifted=False)
    for event in events:
        event.pop("context", None)
    log = write_log(tmp_path / "events", events)
    args = [a for a in monitor_args(world, log, tmp_path / "r") if a != world["data"]]
    args.remove("--dataset")
    code, err = run(args, capsys)
    report = json.loads((tmp_path / "r" / "drift.json").read_text())
    assert code == 0, err
    assert report["output"]["scores"] == {} and "no impression carries a score" in err
    assert report["input"]["unknown_users"]["share"] is None and "--dataset" in err


def test_too_few_events_are_shown_but_not_judged(world, tmp_path, capsys):
    events = traffic(world["frame"], shifted=True)
    log = write_log(tmp_path / "events", [e for e in events if e["type"] != "impression"][:150])
    code, err = run(monitor_args(world, log, tmp_path / "r"), capsys)
    report = json.loads((tmp_path / "r" / "drift.json").read_text())
    assert code == 0, err
    assert not report["input"]["judged"] and not report["output"]["judged"]
    assert report["input"]["unknown_items"]["share"] > 0.2  # over its threshold, not judged
    assert not any(check["judged"] for check in report["checks"]) and "not judged" in err


def test_bad_input_is_one_line_and_exit_2(world, tmp_path, capsys):
    log = write_log(tmp_path / "events", traffic(world["frame"], shifted=False)[:500])
    args = monitor_args(world, log, tmp_path / "r")
    bad = tmp_path / "bad.yaml"
    for text, says in (
        ("thresholds:\n  item_popularity_psi: lots\n", "thresholds.item_popularity_psi"),
        ("window: 1 day\n", "window"),
        ("colour: red\n", "colour"),
        ("thresholds: [1, 2\n", "not valid YAML"),
    ):
        bad.write_text(text)
        code, err = run([*args[:-1], bad], capsys)
        assert code == 2 and says in one_error_line(err)
    code, err = run([*args, "--until", WINDOW_DAY - 10 * DAY], capsys)
    assert code == 2 and "no events in the window" in one_error_line(err)
    code, err = run([*args, "--window", "soon"], capsys)
    assert code == 2 and "not a duration" in one_error_line(err)
    wrong = [tmp_path / "nowhere" if a == log else a for a in args]
    code, err = run(wrong, capsys)
    assert code == 2 and "not an event log directory" in one_error_line(err)
    wrong = [world["data"] if a == world["artifact"] else a for a in args]
    code, err = run(wrong, capsys)
    assert code == 2 and "expected a 'artifact' directory" in one_error_line(err)
    old = tmp_path / "old-artifact"
    shutil.copytree(world["artifact"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, PROFILE: None}))
    code, err = run([old if a == world["artifact"] else a for a in args], capsys)
    assert code == 2 and "re-export it" in one_error_line(err)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run([empty if a == log else a for a in args], capsys)
    assert code == 2 and "holds no events" in one_error_line(err)


def _loop_config(world: dict, root: Path, monitor: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    artifacts = {"dataset": world["data"], "ranker": world["artifact"]}
    serve = write_serve_config(
        root / "serve.yaml",
        {**artifacts, "retriever": world["artifact"]},
        root / "state",
        free_port(),
    )
    (root / "train.yaml").write_text("seed_everything: 0\n")
    (root / "monitor.yaml").write_text(yaml.safe_dump(monitor))
    config = {
        "loop_dir": str(root / "loop"),
        "serve_config": str(serve),
        "service": f"http://127.0.0.1:{free_port()}",
        "key_env": "MONITOR_TRIGGER_KEY",
        "train": {
            "warm_start": False,
            **{side: {"config": str(root / "train.yaml")} for side in ("ranker", "retriever")},
        },
        "trigger": {"monitor": str(root / "monitor.yaml"), "window": "1d"},
    }
    path = root / "loop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_retrain_with_a_trigger_does_nothing_without_drift(world, tmp_path, capsys, monkeypatch):
    """The serving model is the artifact (the admin API's answer is stood in for); with traffic
    like the training data the run stops at the trigger, and a shifted log would retrain."""
    from recstack.loop.admin_client import AdminClient
    from recstack.loop.config import read_loop_config
    from recstack.loop.retrain import drift_trigger

    monkeypatch.setenv("MONITOR_TRIGGER_KEY", "k" * 20)
    dirs = {"ranker": str(world["artifact"]), "retriever": str(world["artifact"])}
    monkeypatch.setattr(AdminClient, "served_dirs", lambda self, model: dirs)
    config = _loop_config(world, tmp_path, {"min_events": 100})
    write_log(tmp_path / "state" / "events", traffic(world["frame"], shifted=False))
    assert main(["retrain", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "no drift" in err and not list((tmp_path / "loop" / "runs").iterdir())
    assert list((tmp_path / "loop" / "monitor").glob("*/drift.json"))

    shifted = tmp_path / "shifted"
    config = _loop_config(world, shifted, {"min_events": 100})
    write_log(shifted / "state" / "events", traffic(world["frame"], shifted=True))
    serving = {"dirs": dirs, "dataset": str(world["data"])}
    found = drift_trigger(read_loop_config(config), serving, shifted / "report")
    assert "unknown_item_share" in found["breached"] and Path(found["report"]).is_file()

    bad = _loop_config(world, tmp_path / "bad", {"window": "often"})
    assert main(["retrain", "--config", str(bad)]) == 2
    assert "monitor config" in one_error_line(capsys.readouterr().err)


def test_ordinal_times_have_no_activity_histogram_and_say_so(tmp_path):
    from recstack.data_profile import ACTIVITY_EDGES, Histogram
    from recstack.datasets.prepare import prepare
    from recstack.loop.drift import compare

    seqs = tmp_path / "seqs.txt"
    seqs.write_text("1 10 11 12\n2 11 12 13\n3 10 13\n")
    manifest = prepare(f"seqlines:{seqs}", tmp_path / "data", quiet=True)
    assert manifest["profile"]["user_activity"] is None
    assert manifest["profile"]["item_popularity"]["total"] == 8
    window = Histogram(edges=list(ACTIVITY_EDGES), share=[1.0] + [0.0] * 8, total=3)
    block = compare(None, window)
    assert block["psi"] is None and block["js"] is None and "sequence positions" in block["note"]
