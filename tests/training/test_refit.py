"""`recstack train --refit true`: after the validated fit, the same config trains again on
TRAIN + VALID events for the chosen epoch count, and its test sits beside the validated one.

The log is built so that the refit has something to learn that the first fit cannot: "learner"
users end with W -> P (valid) -> Q (test), and the only P -> Q transitions in the log are the
"teacher" users' VALID events. Q is never a TRAIN event at all, so only a model that trained on
VALID events can rank it for the learners. Filler users walk a chain, so validation keeps
improving for a few epochs and picks a later epoch than the first.
"""

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from train_configs import SASREC, write_config

from recstack.artifact_manifest import read_artifact_manifest
from recstack.cli import main
from recstack.datasets.prepare import prepare
from recstack.datasets.sources.tabular import ColumnMapping
from recstack.errors import RecstackError
from recstack.training import train_cli

TEACHERS, LEARNERS, FILLERS, FILLER_ITEMS = 30, 30, 120, 60


def _write_log(path: Path) -> Path:
    rows = []

    def user(name: str, items: list[str]) -> None:
        for step, item in enumerate(items):
            rows.append((name, item, 1_700_000_000 + 3600 * step, "mobile"))

    for u in range(TEACHERS):  # train [s, P], valid Q, test R
        user(f"t{u}", [f"s{u % 5}", "P", "Q", "R"])
    for u in range(LEARNERS):  # train [w, W], valid P, test Q
        user(f"l{u}", [f"w{u % 5}", "W", "P", "Q"])
    for u in range(FILLERS):  # a chain walk: the next filler is a function of the last
        start = (u * 7) % FILLER_ITEMS
        user(f"f{u}", [f"f{(start + k) % FILLER_ITEMS}" for k in range(6)])
    pl.DataFrame(rows, schema=["uid", "iid", "t", "device"], orient="row").write_csv(path)
    return path


@pytest.fixture(scope="module")
def refit_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refit")
    mapping = ColumnMapping(user="uid", item="iid", timestamp="t", context=["device"])
    prepare(source=f"csv:{_write_log(root / 'log.csv')}", out=root / "ds", columns=mapping,
            quiet=True)  # fmt: skip
    return root / "ds"


def test_the_refit_trains_on_valid_events_for_the_chosen_epochs(tmp_path, refit_dir):
    config = write_config(tmp_path, refit_dir, SASREC, max_epochs=12)
    slower = ["--model.init_args.optim.lr", "0.002"]  # validation peaks after a few epochs
    assert main(["train", "--config", str(config), "--refit", "true", *slower]) == 0
    run = tmp_path / "run"
    report = json.loads((run / "metrics.json").read_text())
    refit = report["refit"]
    assert refit["fit_on"] == "train_valid"
    assert refit["epochs"] == report["best_epoch"] + 1 >= 2
    refit_config = yaml.safe_load((run / "refit" / "config.yaml").read_text())
    assert refit_config["data"]["fit_on"] == "train_valid"
    assert refit_config["trainer"]["max_epochs"] == refit["epochs"]
    assert (run / "refit" / "checkpoints" / "last.ckpt").is_file()
    own = json.loads((run / "refit" / "metrics.json").read_text())  # what export reads
    assert own["test"] == refit["test"] and own["refit_of"] == str(run)
    artifact = tmp_path / "artifact"
    ckpt = run / "refit" / "checkpoints" / "last.ckpt"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(artifact)]) == 0
    assert read_artifact_manifest(artifact).training.test == refit["test"]
    epochs = pl.read_csv(run / "refit" / "logs" / "metrics.csv")["epoch"].drop_nulls().unique()
    assert epochs.len() == refit["epochs"]
    # the first fit's logs are its own: the refit wrote into run/refit only
    assert "val/ndcg@10" in pl.read_csv(run / "logs" / "metrics.csv").columns
    # only the refit saw P -> Q: the learners' test target
    learners = LEARNERS / (TEACHERS + LEARNERS + FILLERS)
    gain = refit["test"]["hr@10"] - report["test"]["hr@10"]
    assert gain >= 0.5 * learners, (refit["test"], report["test"])


def test_without_refit_the_report_has_none(tmp_path, refit_dir):
    config = write_config(tmp_path, refit_dir, SASREC, max_epochs=1)
    assert main(["train", "--config", str(config)]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["refit"] is None
    assert not (tmp_path / "run" / "refit").exists()


def test_a_failed_refit_keeps_the_validated_report(tmp_path, refit_dir, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RecstackError("the refit was interrupted; train again (run dir x)")

    monkeypatch.setattr(train_cli, "refit", broken)
    config = write_config(tmp_path, refit_dir, SASREC, max_epochs=1)
    assert main(["train", "--config", str(config), "--refit", "true"]) == 2
    assert "the refit was interrupted" in capsys.readouterr().err
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["test"]["hr@10"] >= 0 and report["refit"] is None
