"""The demo's train and export steps print their own story, not third-party noise: no torchvision
lines or LeafSpec FutureWarning from the ONNX exporter or Lightning, no Lightning litlogger tip.

They run as `recstack` processes, so the output is what a console shows (Python's default
warning filters, the libraries' own log handlers), not what pytest captures."""

import subprocess
import sys

import pytest
from train_configs import RETRIEVAL, SASREC, write_config

RECSTACK = [sys.executable, "-m", "recstack.cli"]  # as the `recstack` console script
NOISE = (
    "torchvision",
    "FutureWarning",
    "LeafSpec",
    "DeprecationWarning",
    "litlogger",
    "Tip:",  # Lightning's advertisements
    "axis name",  # the exporter's note on a Dim shared by two inputs
)


def recstack(*args: str) -> str:
    done = subprocess.run([*RECSTACK, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize(
    "task", [SASREC, pytest.param(RETRIEVAL, marks=pytest.mark.slow)], ids=["sasrec", "two_tower"]
)
def test_train_and_export_print_no_third_party_noise(tmp_path, chain_dir, task):
    config = write_config(tmp_path, chain_dir, task, max_epochs=1)
    out = recstack("train", "--config", str(config))
    out += recstack(
        "export",
        "--ckpt",
        str(tmp_path / "run/checkpoints/best.ckpt"),
        "--out",
        str(tmp_path / "art"),
    )
    assert "exported" in out
    noisy = [line for line in out.splitlines() if any(word in line for word in NOISE)]
    assert not noisy, "\n".join(noisy)
