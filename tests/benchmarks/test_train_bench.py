"""benchmarks/train_bench.py end to end on its tiny synthetic size (CPU, one epoch)."""

import json
from pathlib import Path

import pytest
from bench_script import load_script

RUN_FIELDS = {
    "size", "model", "settings", "dataset", "batches_measured", "batches_per_epoch",
    "per_batch_s", "samples_per_s", "data_wait_share", "val_users", "val_users_measured",
    "val_ndcg@10", "peak_rss_mib", "cuda_max_allocated_mib", "meets_target", "epochs",
}  # fmt: skip


@pytest.fixture(scope="module")
def train_bench():
    return load_script("train_bench")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-data")


def check_result(result: dict, models: list[str]) -> None:
    assert result["device"] == "cpu" and result["precision"] == "32-true"
    assert {"cpu", "cores", "ram_gib", "gpu"} <= set(result["machine"])
    assert {"python", "torch", "lightning"} <= set(result["versions"])
    assert result["targets"]["max_seconds"]["synth-1m/sasrec"] == {"epoch_s": 1.0, "val_s": 1.0}
    assert [run["model"] for run in result["runs"]] == models
    for run in result["runs"]:
        assert RUN_FIELDS <= set(run), RUN_FIELDS - set(run)
        assert run["dataset"] == {"interactions": 5000, "users": 200, "items": 100}
        assert run["per_batch_s"] > 0 and run["samples_per_s"] > 0
        assert 0 <= run["data_wait_share"] < 1
        assert 0 <= run["val_ndcg@10"] <= 1
        assert run["peak_rss_mib"] > 50
        assert run["cuda_max_allocated_mib"] is None and run["meets_target"] is None
        assert len(run["epochs"]) == 1 and run["epochs"][0]["samples"] > 0


def test_cli_scales_partial_epochs_and_validation_up(train_bench, data_dir, tmp_path):
    """On CPU the tiny size runs 3 batches and ranks 100 users (its CPU defaults)."""
    out = tmp_path / "bench.json"
    argv = ["--sizes", "tiny", "--epochs", "1", "--device", "cpu", "--out", str(out)]
    train_bench.main([*argv, "--data_dir", str(data_dir)])
    result = json.loads(out.read_text())
    check_result(result, ["sasrec", "two_tower"])
    for run in result["runs"]:
        assert run["batches_measured"] == 3 < run["batches_per_epoch"]
        assert "epoch_s" not in run and run["epoch_s_estimated"] > run["per_batch_s"] * 3
        assert run["val_users_measured"] == 100 < run["val_users"]
        assert "val_s" not in run and run["val_s_estimated"] > 0


def test_whole_epochs_count_every_transition_once(train_bench, data_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = train_bench.train_bench(
        sizes="tiny", epochs=1, max_batches=0, val_users=0, device="cpu", out=out, data_dir=data_dir
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    check_result(result, ["sasrec", "two_tower"])
    for run in result["runs"]:
        assert run["batches_measured"] == run["batches_per_epoch"]
        assert run["epoch_s"] > 0 and "epoch_s_estimated" not in run
        assert run["val_users_measured"] == run["val_users"] and run["val_s"] > 0
    # SASRec's non-PAD targets and the two-tower's events with a history are the same set:
    # every transition a -> b of a user's training events
    sasrec, two_tower = (run["epochs"][0]["samples"] for run in result["runs"])
    assert sasrec == two_tower


def test_unknown_size_is_refused(train_bench, tmp_path):
    with pytest.raises(SystemExit, match="synth-1m"):
        train_bench.train_bench(sizes="ml-1m", out=tmp_path / "x.json", data_dir=tmp_path)
