"""`recstack train --config configs/train/<x>.yaml`: LightningCLI over a task and the DataModule.

    recstack train --config configs/train/sasrec_ml100k.yaml
    recstack train --config configs/train/sasrec_ml100k.yaml --ckpt_path last   # resume
    recstack train --config ... --init_from runs/old/checkpoints/best.ckpt        # warm start
    recstack train --config ... --trainer.devices 2 --trainer.strategy ddp    # several GPUs

The config has LightningCLI's sections (`trainer`, `model` with a task class_path, `data`,
`seed_everything`) plus `run_dir`, `early_stopping` and `checkpoint`. Everything a run writes
goes into run_dir: config.yaml, checkpoints/{best,last}.ckpt, CSV and TensorBoard logs, and
metrics.json (test metrics next to the baselines, see `run_report`).
Precision defaults to bf16-mixed on CUDA and 32-true on CPU.
"""

import json
import re
import time
import warnings
from argparse import ArgumentError
from contextlib import nullcontext
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_module

from recstack.errors import RecstackError
from recstack.eval_report import write_json
from recstack.training.compile_net import CompileNet
from recstack.training.data.datamodule import RecDataModule
from recstack.training.interrupt import InterruptAtBatchEnd, deferred_interrupt, raise_if_requested
from recstack.training.quiet import LEAF_SPEC, LIGHTNING_TIP, log_lines_off, warnings_off
from recstack.training.refit import refit_config, refit_report
from recstack.training.run_report import METRICS_FILE, add_refit, best_entry, write_run_report
from recstack.training.tasks.base import MONITOR, RecTask
from recstack.training.warm_start import WarmStart

LAST = "last"


def best_checkpoint(trainer) -> str | None:
    """Path of the best checkpoint by validation NDCG@10 (None if none was saved)."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor == MONITOR and callback.best_model_path:
            return callback.best_model_path
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temp file, then rename: a kill -9 never leaves half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        tmp.replace(path)


_NOISE = (
    "Does not validate",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Expected a <class 'NoneType'>",
    "Problem with given class_path",
    "Parser key",
    "tip:",
)


def explain_config_error(text: str) -> str:
    """One line out of jsonargparse's nested report: where in the config, and what is wrong."""
    keys = [k for k in re.findall(r'Parser key "([^"]+)"', text) if k != "init_args"]
    lines = [line.strip().lstrip("-").strip() for line in text.splitlines()]
    useful = [line for line in lines if line and not line.startswith(_NOISE)]
    detail = useful[-1] if useful else text.strip().splitlines()[0]
    where = f" at {'.'.join(keys)}" if keys else ""
    return f"invalid config{where}: {detail} (see `recstack train --help`)"


class StopOnNonFiniteLoss(Callback):
    """Stop with a clear error when the training loss becomes NaN or infinite, instead of
    training on for hours with broken weights. Each step only updates a flag on the device;
    it is read (a GPU sync) every `every` steps and before each validation."""

    def __init__(self, every: int = 20) -> None:
        self.every = every
        self._bad: torch.Tensor | None = None
        self._first: tuple[int, int] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = ~torch.isfinite(loss.detach())
        self._bad = bad if self._bad is None else self._bad | bad
        if self._first is None:
            self._first = (trainer.current_epoch, batch_idx)
        if batch_idx % self.every == 0:
            self._check(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._check(trainer)

    def _check(self, trainer) -> None:
        if self._bad is not None and bool(self._bad.item()):
            epoch, batch = self._first
            raise RecstackError(
                f"training loss became nan or inf (epoch {trainer.current_epoch}, checked since "
                f"epoch {epoch} batch {batch}): lower model.optim.lr or raise the loss temperature"
            )
        self._bad, self._first = None, None


class SaveRunConfig(SaveConfigCallback):
    """Save the resolved config as <run_dir>/config.yaml (not in a logger's sub-directory)."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.config_filename
            path.parent.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, path, skip_none=False, overwrite=True)


class RecstackCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_dir",
            type=Path,
            default=Path("runs/train"),
            help="where the run writes everything",
        )
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume from this checkpoint, or 'last'",
        )
        parser.add_argument(
            "--init_from",
            type=str | None,
            default=None,
            help="warm start: copy this checkpoint's weights first (new item rows start fresh)",
        )
        parser.add_argument(
            "--baselines",
            type=bool,
            default=True,
            help="evaluate MostPop/EASE/Markov into metrics.json",
        )
        parser.add_argument(
            "--quality_threshold",
            type=float,
            default=0.10,
            help="report when val NDCG@10 first reaches it",
        )
        parser.add_argument(
            "--test_tie_orders",
            type=int,
            default=1,
            help="final valid/test scores: average over this many orders of each history's "
            "equal-timestamp events (1 = the log's order; per-epoch validation always uses 1)",
        )
        parser.add_argument(
            "--refit",
            type=bool,
            default=False,
            help="after the validated fit, train again on TRAIN + VALID events for the chosen "
            "number of epochs and report that model's test beside the validated one's "
            "(metrics.json `refit`; its checkpoints in run_dir/refit)",
        )
        parser.add_argument(
            "--compile",
            type=bool,
            default=False,
            help="torch.compile the network before the first step (in place: checkpoints "
            "keep their keys)",
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "early_stopping.monitor": MONITOR,
                "early_stopping.mode": "max",
                "early_stopping.patience": 10,
            }
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_last": False,
                "checkpoint.save_top_k": 1,
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.link_arguments("seed_everything", "data.seed")
        parser.link_arguments("seed_everything", "model.init_args.seed")

    def instantiate_trainer(self, **kwargs):
        kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        with log_lines_off(rank_zero_module.log.name, LIGHTNING_TIP):
            trainer = super().instantiate_trainer(**kwargs)
        # last.ckpt after every epoch (Lightning's save_last only follows an improvement), so a
        # killed run resumes from its latest epoch with --ckpt_path last.
        last = ModelCheckpoint(
            dirpath=self.config.checkpoint.dirpath,
            filename=LAST,
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
        )
        trainer.callbacks.extend([last, StopOnNonFiniteLoss()])
        if self.config.init_from:
            trainer.callbacks.append(WarmStart(Path(self.config.init_from)))
        if self.config.compile:
            trainer.callbacks.append(CompileNet())
        return trainer

    def before_instantiate_classes(self) -> None:
        config = self.config
        run_dir = Path(config.run_dir)
        config.checkpoint.dirpath = str(run_dir / "checkpoints")
        trainer = config.trainer
        trainer.default_root_dir = str(run_dir)
        if trainer.logger in (None, True):
            trainer.logger = [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(run_dir), "name": "logs", "version": ""},
                },
                {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": str(run_dir), "name": "tensorboard", "version": ""},
                },
            ]
        if trainer.precision in (None, "auto"):
            on_gpu = torch.cuda.is_available() and trainer.accelerator in ("auto", "gpu", "cuda")
            trainer.precision = "bf16-mixed" if on_gpu else "32-true"


def build_cli(
    argv: list[str] | dict,
    callbacks: list | None = None,
    save_config: bool = True,
    prog: str = "recstack train",
    cli_class: type[RecstackCLI] = RecstackCLI,
) -> RecstackCLI:
    """Parse a training config into a ready Trainer, task and DataModule (nothing runs yet).

    `callbacks` join the configured ones (tuning adds its pruning callback); a config error is
    raised as one RecstackError line."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
            return cli_class(
                model_class=RecTask,
                datamodule_class=RecDataModule,
                subclass_mode_model=True,
                run=False,
                args=argv,
                seed_everything_default=0,
                save_config_callback=SaveRunConfig if save_config else None,
                save_config_kwargs={"save_to_log_dir": False, "config_filename": "config.yaml"},
                trainer_defaults={
                    "num_sanity_val_steps": 0,
                    "callbacks": [InterruptAtBatchEnd(), *(callbacks or [])],
                },
                parser_kwargs={"description": __doc__, "exit_on_error": False, "prog": prog},
            )
    except (ArgumentError, ValueError, TypeError) as exc:
        raise RecstackError(explain_config_error(str(exc))) from None


def resolved_config(cli: RecstackCLI) -> dict:
    return json.loads(cli.parser.dump(cli.config, format="json", skip_validation=True))


class _ParseOnly(RecstackCLI):
    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def check_config(config: dict) -> dict:
    """Validate a training config (types, keys, choices) without building anything; returns
    it with every default filled in. Raises a one-line RecstackError."""
    return resolved_config(build_cli(config, save_config=False, cli_class=_ParseOnly))


def _fit(trainer, *args, **kwargs) -> None:
    """trainer.fit, returning after a Ctrl-C (trainer.interrupted) instead of exiting: Lightning
    ends its Ctrl-C path with sys.exit(1), which skipped the caller's resume hint."""
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit:
        if not trainer.interrupted:
            raise


def train(argv: list[str]) -> dict | None:
    cli = build_cli(argv)
    # One process: Ctrl-C stops at a batch end (training/interrupt.py). DDP ranks keep
    # Lightning's own handling: ranks stopping at different batches would wait on each other.
    with deferred_interrupt() if cli.trainer.world_size == 1 else nullcontext():
        return _train(cli)


def _train(cli: RecstackCLI) -> dict | None:
    config = cli.config
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with warnings_off(LEAF_SPEC):
        _fit(cli.trainer, cli.model, datamodule=cli.datamodule, ckpt_path=config.ckpt_path)
    fit_seconds = time.perf_counter() - started
    if cli.trainer.interrupted:
        raise RecstackError(
            f"training interrupted; resume with --ckpt_path last (run dir {run_dir})"
        )
    raise_if_requested()  # Ctrl-C after the last batch: no report, no refit
    report = None
    if cli.trainer.is_global_zero:  # the validated model's report first: a failed refit keeps it
        report = write_run_report(
            cli.model,
            cli.datamodule,
            run_dir,
            best_checkpoint(cli.trainer),
            fit_seconds,
            config=resolved_config(cli),
            baselines=config.baselines,
            quality_threshold=config.quality_threshold,
            tie_orders=config.test_tie_orders,
        )
    if config.refit:
        refit = _refit(cli, run_dir)  # every rank fits
        if report is not None and refit is not None:
            report = add_refit(run_dir, report, refit)
    return report


def _refit(cli: RecstackCLI, run_dir: Path) -> dict | None:
    """The run's refit for its best epoch count; None when nothing was validated."""
    best = best_entry(cli.model.history)
    if not best:
        return None
    return refit(resolved_config(cli), run_dir, best["epoch"] + 1)


def refit(config: dict, run_dir: Path, epochs: int) -> dict | None:
    """Train the resolved training `config` again on TRAIN + VALID events for `epochs` epochs
    (training/refit) and return its test report on rank zero (None on the others)."""
    refit_cli = build_cli(refit_config(config, run_dir, epochs))
    started = time.perf_counter()
    with warnings_off(LEAF_SPEC):
        _fit(refit_cli.trainer, refit_cli.model, datamodule=refit_cli.datamodule)
    fit_seconds = time.perf_counter() - started
    if refit_cli.trainer.interrupted:
        raise RecstackError(f"the refit was interrupted; train again (run dir {run_dir})")
    if not refit_cli.trainer.is_global_zero:
        return None
    tie_orders = refit_cli.config.test_tie_orders
    report = refit_report(refit_cli.model, refit_cli.datamodule, epochs, fit_seconds, tie_orders)
    # in the refit's own run dir too: `recstack export` of its checkpoint carries the figures
    write_json(Path(refit_cli.config.run_dir) / METRICS_FILE, {**report, "refit_of": str(run_dir)})
    return report
