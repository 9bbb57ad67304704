"""What every task shares: the optimiser, per-epoch seeding and full-ranking validation.

Validation runs the foundation's evaluator (full ranking, seen items masked) once per epoch.
Under DDP each rank evaluates a contiguous shard of the validation users; per-user metric sums
and counts are all-reduced, so the logged `val/ndcg@10` is the exact mean over all users on
every rank (what early stopping and checkpointing read).
"""

import time
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from recstack.errors import RecstackError
from recstack.schema import PAD_IDX
from recstack.training.data.facts import DataFacts, TrainSamples
from recstack.training.eval.evaluator import EvalBatch, auto_batch_size, evaluate
from recstack.training.losses import LossConfig, RecLoss

VAL_METRICS = ("ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20")
MONITOR = "val/ndcg@10"
MAX_EVAL_USERS = 256  # users per validation batch at most (sorted by history length)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta2: float = 0.98
    ema_decay: float = 0.0  # > 0: validate, test and export an exponential moving average
    warmup_steps: int = 0  # > 0: the lr rises linearly to `lr` over this many steps

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or not 0 < self.beta2 < 1:
            raise RecstackError(
                f"optim needs lr > 0, weight_decay >= 0, 0 < beta2 < 1 (got {asdict(self)})"
            )
        if self.warmup_steps < 0:
            raise RecstackError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise RecstackError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")


def as_config(cls, value):
    """A config dataclass from itself or from a dict (checkpoints store plain dicts)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise RecstackError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        return cls(**value)
    raise RecstackError(f"expected {cls.__name__} or a dict, got {type(value).__name__}")


def batch_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, batch_idx, rank]).generate_state(1)[0])


def warmup_factor(warmup_steps: int, step: int) -> float:
    """The share of the lr at optimizer step `step` (0-based): linear up to 1 over warmup_steps."""
    return min(1.0, (step + 1) / warmup_steps)


class RunningLoss:
    """A weighted sum of step losses, kept on the loss's device: adding never syncs the host."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.weight = 0

    def add(self, loss: torch.Tensor, weight: int) -> None:
        weighted = loss.detach() * weight
        self.total = weighted if self.total is None else self.total + weighted
        self.weight += weight

    def take_mean(self) -> float | None:
        """The weighted mean so far (one host sync), and a fresh start."""
        mean = None if self.total is None else float(self.total) / self.weight
        self.total, self.weight = None, 0
        return mean


class RecTask(pl.LightningModule):
    """Subclasses define `build_from_data` (the net from the data facts, then `attach_ema`),
    `train_samples`, `training_step` and `score_fn` (scoring with `self.scoring_net`).

    The data facts (sizes, features, evaluation sets) are read once from the data module in
    `setup`, which also tells it what this task trains on; nothing else crosses."""

    def __init__(
        self, optim: OptimConfig | dict | None, loss: LossConfig | dict | None, seed: int = 0
    ) -> None:
        super().__init__()
        self.optim = as_config(OptimConfig, optim or OptimConfig())
        self.loss_config = as_config(LossConfig, loss or LossConfig())
        self.seed = seed
        self.net: torch.nn.Module | None = None
        self.loss_fn: RecLoss | None = None  # needs the dataset's item frequencies
        self.facts: DataFacts | None = None  # from the data module, at setup
        self.ema: AveragedModel | None = None
        self.history: list[dict[str, Any]] = []  # per-epoch validation metrics with wall time
        self._fit_started: float | None = None
        self._loss_window, self._loss_epoch = RunningLoss(), RunningLoss()

    def attach_ema(self) -> None:
        """An exponential moving average of the weights (Polyak averaging), when configured.

        It is a submodule, so checkpoints hold it and resuming continues it exactly.
        """
        if self.optim.ema_decay > 0 and self.ema is None:
            self.ema = AveragedModel(
                self.net, multi_avg_fn=get_ema_multi_avg_fn(self.optim.ema_decay)
            )  # buffers (item features) are copied, not averaged

    @property
    def scoring_net(self) -> torch.nn.Module:
        """The weights that are validated, tested and exported: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.net

    # --- hooks ----------------------------------------------------------------------------
    def build_from_data(self, facts: DataFacts) -> None:
        """Build `self.net` with the dataset's sizes (and features)."""
        raise NotImplementedError

    def train_samples(self) -> TrainSamples:
        """What this task trains on (known before the net is built)."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        if data is None:
            raise RecstackError("a recstack task runs with a RecDataModule (datamodule=...)")
        self.facts = data.facts()
        data.train_on(self.train_samples())

    def configure_model(self) -> None:
        if self.facts is None:  # load_from_checkpoint: the net was built in __init__
            return
        if self.net is None:
            self.build_from_data(self.facts)
        counts = torch.from_numpy(self.facts.item_counts)
        self.loss_fn = RecLoss(self.loss_config, self.facts.n_items, counts)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.net.named_parameters():
            (no_decay if param.ndim < 2 or "emb" in name else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.optim.lr, betas=(0.9, self.optim.beta2))
        if not self.optim.warmup_steps:
            return optimizer
        # a large batch's scaled-up lr, reached step by step (checkpoints keep the position)
        warmup = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(warmup_factor, self.optim.warmup_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter() - (
            self.history[-1]["wall_s"] if self.history else 0
        )

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        if batch_idx + 1 >= self.trainer.num_training_batches:  # before validation and callbacks
            self._log_epoch_loss()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Dropout and negative sampling depend only on (seed, epoch, batch, rank), not on what
        # drew random numbers before (DataLoader iterators do): a run resumed from a checkpoint
        # replays exactly what an uninterrupted run would have done. Only the generators this
        # process draws from are reseeded: torch.manual_seed would also queue a seed for every
        # CUDA device where CUDA is not up, capturing a stack trace each step (~1 ms).
        seed = batch_seed(self.seed, self.current_epoch, batch_idx, self.global_rank)
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)  # this process's device (CUDA is up: no queued call)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_loss()  # an epoch cut short (max_steps) has not logged it yet

    def _log_epoch_loss(self) -> None:
        mean = self._loss_epoch.take_mean()
        if mean is not None:
            self.log(
                "train/loss_epoch", mean, prog_bar=True, on_step=False, on_epoch=True, batch_size=1
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["recstack"] = {"history": self.history}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("recstack", {}).get("history", []))

    # --- validation -----------------------------------------------------------------------
    def score_fn(self, target: str, tie_orders: int = 1):
        """EvalBatch -> [B, n_items + 1] scores, for the "valid" or "test" targets (see Scorer)."""
        raise NotImplementedError

    def evaluate_shard(self, target: str, rank: int, world: int):
        eval_set = self.facts.eval_set(target)
        bounds = np.linspace(0, eval_set.n_users, world + 1).astype(int)
        shard = eval_set.slice(bounds[rank], bounds[rank + 1])
        batch_size = self.facts.eval_batch_size
        if batch_size is None:  # bounded also by the model's activations, not only the scores
            batch_size = min(MAX_EVAL_USERS, auto_batch_size(shard.n_items))
        return evaluate(
            self.score_fn(target),
            shard,
            ks=(10, 20),
            batch_size=batch_size,
            device=self.device,
            beyond=False,
        )

    def validation_step(self, batch, batch_idx: int) -> None:
        net = self.scoring_net
        was_training = net.training
        net.eval()
        result = self.evaluate_shard("valid", self.global_rank, self.trainer.world_size)
        net.train(was_training)
        sums = [float(np.nansum(result.per_user[m])) for m in VAL_METRICS]
        sums.append(float(result.n_users))
        totals = torch.tensor(sums, dtype=torch.float64, device=self.device)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        n_users = max(float(totals[-1]), 1.0)
        metrics = {f"val/{m}": float(totals[i]) / n_users for i, m in enumerate(VAL_METRICS)}
        self.log_dict(metrics, prog_bar=True, batch_size=1)
        if not self.trainer.sanity_checking:
            wall = time.perf_counter() - self._fit_started if self._fit_started else None
            self.history.append({"epoch": self.current_epoch, "wall_s": wall, **metrics})

    def log_train_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """The step's loss joins two sums on the device. Their means are logged, as Python
        floats (one host sync each), every `trainer.log_every_n_steps` steps (train/loss_step)
        and at the end of the epoch (train/loss_epoch): no sync or logging work in between."""
        self._loss_window.add(loss, batch_size)
        self._loss_epoch.add(loss, batch_size)
        if (self.trainer.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            mean = self._loss_window.take_mean()
            self.log(
                "train/loss_step", mean, prog_bar=True, on_step=True, on_epoch=False, batch_size=1
            )


class Scorer:
    """Wraps a net's scoring call for the evaluator: bf16 autocast on CUDA and, with
    tie_orders > 1, log-softmax scores averaged over that many orders of each history's
    equal-timestamp events (the log's order first, then random ones from `seed`)."""

    def __init__(self, fn, device: torch.device, tie_orders: int = 1, seed: int = 0) -> None:
        self.fn, self.device, self.tie_orders, self.seed = fn, device, tie_orders, seed

    def _scores(self, batch: EvalBatch) -> torch.Tensor:
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.fn(batch).float()
        return self.fn(batch)

    def __call__(self, batch: EvalBatch) -> torch.Tensor:
        if self.tie_orders <= 1 or batch.history_ts is None:
            return self._scores(batch)
        generator = torch.Generator().manual_seed(self.seed)
        total = None
        for k in range(self.tie_orders):
            scores = self._scores(batch if k == 0 else batch.shuffle_ties(generator))
            scores[:, PAD_IDX] = float("-inf")  # PAD takes no probability mass
            log_p = torch.log_softmax(scores, dim=1)
            total = log_p if total is None else total + log_p
        return total / self.tie_orders
