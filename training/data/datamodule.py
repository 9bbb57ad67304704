"""`RecDataModule`: a prepared dataset dir -> training batches and full-ranking eval sets.

The task reads the data facts once (`facts()`: sizes, features, evaluation sets) and says once
what it trains on (`train_on`): windows of history_len items for next-item models, events with
up to history_len earlier events for retrieval models; the DataModule builds that dataset over
memory-mapped event arrays (see `event_arrays`). Neither asks the other again.

Protocol (docs/architecture.md §5): models are fitted on the TRAIN events of the chosen split,
selected on the VALID targets (history = TRAIN) and tested on the TEST targets (history =
TRAIN + VALID).
"""

from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, DistributedSampler

from recstack.dataset_dir import PreparedDataset, load_dataset
from recstack.datasets.download import cache_dir as download_cache_dir
from recstack.datasets.splits import apply_split
from recstack.errors import DataError
from recstack.manifest import CONTENT_HASH
from recstack.schema import ITEM_IDX, SPLIT, TRAIN, USER_IDX
from recstack.training.data.event_arrays import (
    EventArrays,
    arrays_complete,
    write_event_arrays,
)
from recstack.training.data.device_batches import DeviceBatches
from recstack.training.data.facts import DataFacts, TrainSamples
from recstack.training.data.transitions import follower_table
from recstack.training.data.features import (
    build_vocab,
    context_codes,
    item_features,
    user_codes,
)
from recstack.training.data.samples import (
    EpochSampler,
    EventSamples,
    TieShuffle,
    WindowSamples,
    keep_batch,
)
from recstack.eval_set import TARGET_CODE, EvalSet, build_eval_set, history_frame

ARRAYS_VERSION = 2  # bump when the event-array layout changes
DEVICE_SHARE = 0.25  # device_batches auto: the arrays may take this share of the free GPU memory


class RecDataModule(LightningDataModule):
    def __init__(
        self,
        dataset: Path,
        split: Literal["loo", "temporal"] = "loo",
        batch_size: int = 128,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        cache_dir: Path | None = None,
        seed: int = 0,
        fit_on: Literal["train", "train_valid"] = "train",
        shuffle_ties: bool = False,
        device_batches: Literal["auto", "on", "off"] = "auto",
    ) -> None:
        """
        Args:
            dataset: prepared dataset directory (`recstack data prepare --out ...`).
            split: "loo" (leave-one-out by time per user) or "temporal" (global time cut).
            batch_size: training samples per batch (per process under DDP).
            num_workers: DataLoader worker processes (0 = load in the training process; on
                small datasets that is fastest, batches are built vectorised either way).
            eval_batch_size: users per full-ranking batch; None keeps batch x items <= 2^25.
            cache_dir: where the memory-mapped event arrays go; default $RECSTACK_CACHE/arrays
                (or ~/.cache/recstack/arrays), keyed by the dataset's content hash.
            seed: seed of the per-epoch shuffle.
            fit_on: "train" (the protocol: select on the VALID targets) or "train_valid" (refit
                for the test: the VALID events become training events too, as the baselines'
                refit does; validation metrics are then meaningless and not used).
            shuffle_ties: augmentation: every epoch, put a user's events with equal timestamps
                in a new random order (their order in the log is arbitrary; ML-100K has half of
                its events tied to the previous one). Evaluation histories are not touched.
            device_batches: build the training batches on the training device from arrays
                copied there once ("on"), with a DataLoader over the memory-mapped arrays
                ("off"), or "auto": on a single GPU when the arrays take at most a quarter of
                its free memory. The run log and metrics.json say which.
        """
        super().__init__()
        self.dataset_dir = Path(dataset)
        if not self.dataset_dir.is_dir():
            raise DataError(
                f"dataset dir {self.dataset_dir} does not exist; prepare one with "
                f"`recstack data prepare --source ml-100k --out {self.dataset_dir}`"
            )
        if batch_size < 1 or num_workers < 0:
            raise DataError(
                f"batch_size must be >= 1 and num_workers >= 0 (got {batch_size}, {num_workers})"
            )
        self.split = split
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.eval_batch_size = eval_batch_size
        self.cache_root = Path(cache_dir) if cache_dir else download_cache_dir() / "arrays"
        self.seed = seed
        self.fit_on = fit_on
        self.shuffle_ties = shuffle_ties
        if device_batches not in ("auto", "on", "off"):
            raise DataError(f"device_batches={device_batches!r}: use auto, on or off")
        self.device_batches = device_batches
        self.batches_from: str | None = None  # how the training batches were built, in words
        self.data: PreparedDataset | None = None
        self.frame: pl.DataFrame | None = None
        self._eval_sets: dict[str, EvalSet] = {}
        self.samples: TrainSamples | None = None  # what the task trains on (train_on)

    # --- loading -------------------------------------------------------------------------
    def _load(self) -> None:
        if self.data is not None:
            return
        self.data = load_dataset(self.dataset_dir)
        self.frame = apply_split(self.data.interactions, self.split)
        train = self.frame.filter(pl.col(SPLIT) == TRAIN)
        if train.height == 0:
            raise DataError(f"{self.dataset_dir}: the {self.split!r} split has no training events")
        seconds = (self.data.manifest.get("time") or {}).get("ts_unit", "seconds") == "seconds"
        self.vocab = build_vocab(train, self.data.users, self.data.items, time_of_day=seconds)
        self.user_codes = user_codes(self.data.users, self.vocab)
        self.item_tags, self.item_cats = item_features(self.data.items, self.vocab)
        counts = np.bincount(train[ITEM_IDX].to_numpy(), minlength=self.n_items + 1)
        self.item_counts = counts.astype(np.float64)

    @property
    def n_items(self) -> int:
        self._load()
        return self.data.n_items

    @property
    def n_users(self) -> int:
        self._load()
        return self.data.n_users

    @property
    def arrays_dir(self) -> Path:
        self._load()
        key = self.data.manifest.get(CONTENT_HASH, "nohash")[:16]
        return self.cache_root / f"{key}-{self.split}-{self.fit_on}-v{ARRAYS_VERSION}"

    def facts(self) -> DataFacts:
        """What a task reads from the data, once (at its setup)."""
        self._load()
        return DataFacts(
            n_items=self.n_items,
            n_users=self.n_users,
            item_counts=self.item_counts,
            vocab=self.vocab,
            user_codes=self.user_codes,
            item_tags=self.item_tags,
            item_cats=self.item_cats,
            eval_batch_size=self.eval_batch_size,
            eval_set=self.eval_set,
            eval_context=self.eval_context,
            followers=self.followers,
        )

    def followers(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each item's k most frequent next items among the training events (TRAIN, or TRAIN +
        VALID for a refit) and their counts."""
        return follower_table(self._training_events(), self.n_items, k)

    def train_on(self, samples: TrainSamples) -> None:
        """What the task trains on; set before the first `train_dataloader`."""
        self.samples = samples

    def prepare_data(self) -> None:  # once per node, before setup
        self._write_arrays()

    def _training_events(self) -> pl.DataFrame:
        """TRAIN (or TRAIN + VALID) events in time order per user."""
        self._load()
        return history_frame(self.frame, "valid" if self.fit_on == "train" else "test")

    def _write_arrays(self) -> Path:
        if arrays_complete(self.arrays_dir):  # keyed by content: nothing to redo
            return self.arrays_dir
        train = self._training_events()
        return write_event_arrays(
            train, context_codes(train, self.vocab), self.n_users, self.arrays_dir
        )

    def setup(self, stage: str | None = None) -> None:
        self._load()
        self.arrays = EventArrays.open(self._write_arrays())
        if stage == "fit":
            self.eval_set("valid")  # built now, so the first epoch's timing is the epoch's

    # --- training ------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.samples is None:
            raise DataError("no training samples chosen: the task calls train_on() in its setup")
        kind, length = self.samples.kind, self.samples.length
        order = TieShuffle(self.arrays, self.seed) if self.shuffle_ties else None
        if kind == "windows":
            dataset = WindowSamples(self.arrays, length, order)
            lengths = dataset.lengths
        else:
            dataset = EventSamples(self.arrays, self.user_codes, length, order=order)
            lengths = None  # histories are capped at history_len: most are full anyway
        if len(dataset) == 0:
            raise DataError(f"{self.dataset_dir}: no training samples (users need >= 2 events)")
        sampler = EpochSampler(len(dataset), self.seed, lengths, self.batch_size)
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        world = self.trainer.world_size if self.trainer else 1
        on_device, why = self._device_batches(dataset, device, world)
        self.batches_from = (
            f"built on {device} ({why})" if on_device else f"a DataLoader over memory maps ({why})"
        )
        rank_zero_info(f"training batches: {self.batches_from}")
        if on_device:
            return DeviceBatches(dataset, sampler, self.batch_size, device, device.type == "cuda")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _device_batches(self, dataset, device: torch.device, world: int) -> tuple[bool, str]:
        """(build the batches on `device`?, why), from `device_batches` and the free memory."""
        if self.device_batches == "off":
            return False, "data.device_batches off"
        if world > 1:
            if self.device_batches == "on":
                raise DataError(
                    "data.device_batches on builds every batch in one process; under DDP the "
                    "DataLoader shards the samples: use auto or off"
                )
            return False, f"{world} processes: the DataLoader shards the samples"
        if self.device_batches == "on":
            return True, "data.device_batches on"
        if device.type != "cuda":
            return False, f"data.device_batches auto on {device.type}"
        need, (free, _) = DeviceBatches.nbytes(dataset), torch.cuda.mem_get_info(device)
        fits = need <= DEVICE_SHARE * free
        return fits, f"{need / 2**20:.0f} MiB of arrays, {free / 2**30:.1f} GiB free on the GPU"

    # --- evaluation ----------------------------------------------------------------------
    def eval_set(self, target: str) -> EvalSet:
        """Full-ranking users, histories and targets for "valid" or "test"."""
        if target not in self._eval_sets:
            self._load()
            self._eval_sets[target] = build_eval_set(self.frame, target, self.n_items)
        return self._eval_sets[target]

    def eval_context(self, target: str) -> np.ndarray:
        """[n_users, C] context codes of each user's first `target` event (0 where none)."""
        self._load()
        first = self.frame.filter(pl.col(SPLIT) == TARGET_CODE[target]).unique(
            USER_IDX, keep="first"
        )
        codes = context_codes(first, self.vocab)
        out = np.zeros((self.n_users, codes.shape[1]), dtype=np.int64)
        out[first[USER_IDX].to_numpy()] = codes
        return out

    def val_dataloader(self) -> DataLoader:
        """One item per rank: each rank's validation step evaluates its own shard of users."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        shards = list(range(world))
        sampler = (
            DistributedSampler(shards, num_replicas=world, rank=rank, shuffle=False)
            if world > 1
            else None
        )
        return DataLoader(shards, batch_size=1, sampler=sampler)
