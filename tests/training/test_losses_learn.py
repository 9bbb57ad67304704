"""Every loss `loss.kind` offers learns (an option that is offered but does not learn is a
defect): SASRec and the two-tower on the tiny chain dataset (item i is followed by i+1) reach
test HR@10 >= 0.95 with each, as they do with full CE (tests/training/test_train_cli.py). The
ML-100K comparison with CE over 30 epochs is a benchmark run (benchmarks/loss_learning.py)."""

import json

import pytest
from train_configs import RETRIEVAL, SASREC, write_config

from recstack.cli import main

LOSSES = {
    "gbce": {"kind": "gbce", "n_negatives": 8},  # gSASRec's calibration, t = 0.75
    "bce": {"kind": "gbce", "n_negatives": 8, "gbce_t": 0.0},  # plain BCE: beta = 1
    "sampled_uniform": {"kind": "sampled", "n_negatives": 8},
    "sampled_in_batch": {"kind": "sampled", "negatives": "in_batch", "in_batch_cap": 16},
}


@pytest.mark.parametrize("loss", LOSSES.values(), ids=LOSSES.keys())
@pytest.mark.parametrize("task", [SASREC, RETRIEVAL], ids=["sasrec", "two_tower"])
def test_every_offered_loss_learns_the_chain(tmp_path, chain_dir, task, loss):
    config = write_config(tmp_path, chain_dir, task)
    flags = [f"--model.init_args.loss.{key}={value}" for key, value in loss.items()]
    stop_when_fitted = ["--early_stopping.stopping_threshold", "0.99"]  # val NDCG@10
    assert main(["train", "--config", str(config), *flags, *stop_when_fitted]) == 0
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["test"]["hr@10"] >= 0.95, report["test"]
