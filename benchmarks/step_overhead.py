"""Framework overhead of a training step: a `recstack train` step against a plain PyTorch step
of the same model on the same batches.

    .venv/bin/python benchmarks/step_overhead.py                      # SASRec and two-tower, ML-100K
    .venv/bin/python benchmarks/step_overhead.py --models sasrec --steps 300 --profile

The recstack side is `recstack train`'s own Trainer, task and data module (build_cli on
configs/train/<model>_ml100k.yaml: its loggers, checkpoint callbacks, progress bar and data
loader), run for warm-up + --steps steps with validation off (its epoch is never reached). A callback stamps each step's
start, so a step is everything from one batch to the next: loading the batch, the hooks,
logging, the task's math, backward and the optimiser.

The plain side is a loop over the very batches the recstack steps trained on, in the same
order, kept in memory: `task.training_step` (the task's own forward and loss, its logging switched
off), zero_grad, backward and AdamW's step. Nothing else.

Batches differ in cost (SASRec's masked positions), and both sides run the same ones, so the
ratio of the mean step times is the overhead (target <= 1.15x); the medians' ratio is listed
too. With --profile, a cProfile of the
recstack steps lists the functions that take the most time. Writes
benchmarks/results/step_overhead.json (or --out).
"""

import cProfile
import io
import itertools
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import auto_cli
from lightning.pytorch import Callback

sys.path.insert(0, str(Path(__file__).parent))  # this folder's modules, however it is run
from machine_info import machine
from train_bench import CONFIGS  # the ML-100K config of each model

from recstack.datasets.prepare import prepare
from recstack.training.train_cli import build_cli

ROOT = Path(__file__).resolve().parent.parent


class StepClock(Callback):
    """perf_counter at the start of every training batch, and the batch itself."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())
        self.batches.append(batch)


def step_ms(starts: list[float], warmup: int) -> list[float]:
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(starts)]
    return gaps[warmup:]


def recstack_steps(model: str, dataset: Path, run_dir: Path, steps: int, warmup: int, profile):
    clock = StepClock()
    argv = ["--config", str(CONFIGS[model]), "--data.dataset", str(dataset),
            "--run_dir", str(run_dir), "--trainer.accelerator", "cpu",
            "--trainer.max_steps", str(warmup + steps + 1), "--trainer.max_epochs", "-1",
            "--trainer.check_val_every_n_epoch", "100000"]  # fmt: skip
    cli = build_cli(argv, callbacks=[clock], save_config=False)
    if profile is not None:
        profile.enable()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if profile is not None:
        profile.disable()
    return cli, step_ms(clock.starts, warmup), clock.batches[: warmup + steps]


def plain_steps(task, batches: list[dict], warmup: int) -> list[float]:
    """The task's own math on the same batches, held in memory: no Trainer, loader or hooks."""
    task.log_train_loss = lambda *args, **kwargs: None  # self.log needs the Trainer's loop
    optimizer = torch.optim.AdamW(task.net.parameters(), lr=1e-3)
    task.train()
    times = []
    for i, batch in enumerate(batches):
        started = time.perf_counter()
        loss = task.training_step(batch, i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append((time.perf_counter() - started) * 1000)
    return times[warmup:]


def summary(times: list[float]) -> dict:
    return {
        "steps": len(times),
        "median_ms": round(statistics.median(times), 3),
        "mean_ms": round(statistics.fmean(times), 3),
        "p90_ms": round(sorted(times)[int(0.9 * (len(times) - 1))], 3),
    }


def top_functions(profile: cProfile.Profile, limit: int = 25) -> list[str]:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(limit)
    return [line.strip() for line in out.getvalue().splitlines() if line.strip()][-limit:]


def step_overhead(
    models: list[Literal["sasrec", "two_tower"]] | None = None,
    steps: int = 300,
    warmup: int = 30,
    threads: int | None = None,
    data_dir: Path = ROOT / "data" / "ml-100k",
    profile: bool = False,
    out: Path = ROOT / "benchmarks" / "results" / "step_overhead.json",
) -> dict:
    """Time `recstack train` steps and plain PyTorch steps of the same model and batches.

    Args:
        models: which configs/train/<model>_ml100k.yaml to run (default: both).
        steps: steps timed on each side after the warm-up.
        warmup: steps run first and not timed.
        threads: torch threads (default: torch's own choice).
        data_dir: ML-100K, prepared here when missing.
        profile: also record a cProfile of the recstack steps (they run slower under it).
        out: the JSON written.
    """
    if threads:
        torch.set_num_threads(threads)
    if not (data_dir / "manifest.json").exists():
        prepare(source="ml-100k", out=data_dir, quiet=True)
    runs = []
    for model in models or list(CONFIGS):
        with tempfile.TemporaryDirectory() as tmp:
            recorder = cProfile.Profile() if profile else None
            cli, framework, batches = recstack_steps(
                model, data_dir, Path(tmp), steps, warmup, recorder
            )
            plain = plain_steps(cli.model, batches, warmup)
        run = {"model": model, "config": str(CONFIGS[model].relative_to(ROOT)),
               "batch_size": cli.datamodule.batch_size,
               "recstack": summary(framework), "plain": summary(plain)}  # fmt: skip
        run["ratio_median"] = round(run["recstack"]["median_ms"] / run["plain"]["median_ms"], 3)
        run["ratio_mean"] = round(run["recstack"]["mean_ms"] / run["plain"]["mean_ms"], 3)
        run["meets_target"] = run["ratio_mean"] <= 1.15
        if recorder is not None:
            run["profile_tottime"] = top_functions(recorder)
        runs.append(run)
        print(f"{model}: recstack {run['recstack']['mean_ms']} ms / plain "
              f"{run['plain']['mean_ms']} ms per step = {run['ratio_mean']}x")  # fmt: skip
    result = {"machine": machine(), "torch_threads": torch.get_num_threads(), "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    auto_cli(step_overhead, as_positional=False)
