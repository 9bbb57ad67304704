"""One trial: sample params, write the trial's config, train it with pruning, return the
best validation NDCG@10 (never a test metric).

A trial that fails on its own account (a bad combination of params, a NaN loss, out of
memory) is recorded as failed with the reason in its `fail_reason` attribute and the
traceback in <trial dir>/error.txt; the study goes on. Pruned and failed trials drop their
checkpoints; complete ones keep them (the best trial's are evaluated on the test set).
"""

import gc
import logging
import os
import shutil
import socket
import time
import traceback
from pathlib import Path

import optuna
import torch
from optuna_integration import PyTorchLightningPruningCallback
from rich.console import Console

from recstack.errors import RecstackError, first_line
from recstack.training.quiet import LEAF_SPEC, warnings_off
from recstack.training.run_report import best_entry, epochs_trained, val_metrics
from recstack.training.tasks.base import MONITOR
from recstack.training.train_cli import best_checkpoint, build_cli
from recstack.training.tuning.search_space import SearchSpace
from recstack.training.tuning.study import FAIL_REASON, requeue
from recstack.training.tuning.trial_config import trial_config, write_config

TRIAL_CONFIG = "trial.yaml"


class TrialFailed(Exception):
    """A trial failed for a recorded reason (the study continues)."""


class _QuietRecordedFailures(logging.Filter):
    """Optuna logs a failed or interrupted trial with its traceback; the worker has already
    printed the reason in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        recorded = isinstance(exc, TrialFailed | KeyboardInterrupt)
        return not recorded and "failed with value None" not in str(record.msg)


logging.getLogger("optuna.study._optimize").addFilter(_QuietRecordedFailures())


def trial_dir(study_dir: Path, number: int) -> Path:
    return Path(study_dir) / "trials" / f"{number:04d}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {first_line(exc)}"
    if isinstance(exc, RecstackError):
        return first_line(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"


class Objective:
    def __init__(
        self, base: dict, space: SearchSpace, study_dir: Path, console: Console | None = None
    ) -> None:
        self.base, self.space, self.study_dir = base, space, Path(study_dir)
        self.console = console or Console(stderr=True)

    def __call__(self, trial: optuna.Trial) -> float:
        run_dir = trial_dir(self.study_dir, trial.number)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        params = self.space.suggest(trial)
        config = trial_config(self.base, {**self.space.fixed, **params}, run_dir)
        trial.set_user_attr("config", config)
        path = write_config(config, run_dir / TRIAL_CONFIG, f"study trial {trial.number}")
        self.console.print(f"[bold]trial {trial.number}[/bold] {params}")
        completed = False
        try:
            value = self._fit(trial, path)
            completed = True
            return value
        except optuna.TrialPruned:
            raise
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into SystemExit
            requeue(trial.study, trial, "interrupted", mark_failed=False)
            raise KeyboardInterrupt from None
        except Exception as exc:
            reason = _reason(exc)
            trial.set_user_attr(FAIL_REASON, reason)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            self.console.print(f"[red]trial {trial.number} failed:[/red] {reason}")
            raise TrialFailed(reason) from None
        finally:
            if not completed:
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _fit(self, trial: optuna.Trial, config_path: Path) -> float:
        pruning = PyTorchLightningPruningCallback(trial, monitor=MONITOR)
        cli = build_cli(["--config", str(config_path)], callbacks=[pruning], prog="recstack tune")
        if cli.trainer.world_size > 1:
            raise RecstackError(
                "tuning runs each trial on one device; start one worker per GPU "
                "(CUDA_VISIBLE_DEVICES=i recstack tune ...) instead of trainer.devices > 1"
            )
        started = time.perf_counter()
        try:
            with warnings_off(LEAF_SPEC):
                cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        finally:
            history = cli.model.history
            trial.set_user_attr("epochs", epochs_trained(history))
            trial.set_user_attr("fit_s", round(time.perf_counter() - started, 1))
        best = best_entry(history)
        if not best:
            raise RecstackError("no validation epoch finished (raise trainer.max_epochs)")
        trial.set_user_attr("best_epoch", best["epoch"])
        checkpoint = best_checkpoint(cli.trainer)
        trial.set_user_attr("best_checkpoint", checkpoint and str(Path(checkpoint).resolve()))
        trial.set_user_attr("val_metrics", val_metrics(best))
        return float(best[MONITOR])
