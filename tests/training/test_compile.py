"""`recstack train --compile true` trains a compiled network and writes the same checkpoint keys
(torch.compile in place), so resume and export are unchanged. Inductor compiles C++ on CPU:
tens of seconds, so this runs with the slow tests."""

import json

import pytest
import torch
from torch._dynamo.utils import counters
from train_configs import SASREC, write_config

from recstack.cli import main


@pytest.mark.slow
def test_a_compiled_network_learns_and_keeps_its_checkpoint_keys(tmp_path, chain_dir):
    stop_when_fitted = ["--early_stopping.stopping_threshold", "0.99"]
    plain = write_config(tmp_path / "plain", chain_dir, SASREC, max_epochs=2)
    assert main(["train", "--config", str(plain)]) == 0
    compiled = write_config(tmp_path / "compiled", chain_dir, SASREC)
    counters.clear()
    assert main(["train", "--config", str(compiled), "--compile", "true", *stop_when_fitted]) == 0
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did compile the network
    run = tmp_path / "compiled" / "run"
    assert json.loads((run / "metrics.json").read_text())["test"]["hr@10"] >= 0.95
    keys = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"].keys()
    plain_ckpt = tmp_path / "plain" / "run" / "checkpoints" / "last.ckpt"
    assert keys == torch.load(plain_ckpt, weights_only=False)["state_dict"].keys()
    assert not any("_orig_mod" in key for key in keys)
