"""The training loss is summed on the device and logged as a mean every log_every_n_steps steps
and once per epoch (training/tasks/base.py): no per-step logging or host sync."""

import csv
import math

import pytest
import torch
from train_configs import write_config

from recstack.cli import main
from recstack.training.tasks.base import RunningLoss, warmup_factor


def test_running_loss_is_a_weighted_mean_that_starts_afresh():
    running = RunningLoss()
    assert running.take_mean() is None
    running.add(torch.tensor(1.0), 3)
    running.add(torch.tensor(5.0), 1)
    assert running.take_mean() == pytest.approx(2.0)  # (3 * 1 + 5) / 4
    assert running.take_mean() is None


def test_step_losses_every_n_steps_and_one_mean_per_epoch(tmp_path, chain_dir):
    config = write_config(tmp_path, chain_dir, max_epochs=2, log_every_n_steps=3)
    assert main(["train", "--config", str(config)]) == 0
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    epochs = [r for r in rows if r.get("train/loss_epoch")]
    assert steps and all((step + 1) % 3 == 0 for step in steps), steps
    assert len(epochs) == 2 and all(math.isfinite(float(r["train/loss_epoch"])) for r in epochs)


def test_the_warmup_rises_linearly_then_holds():
    assert [warmup_factor(4, step) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
