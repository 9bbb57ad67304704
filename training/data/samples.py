"""Training samples built a whole batch at a time from `EventArrays` (vectorised numpy).

- `WindowSamples` (next-item, SASRec): each user's event sequence cut into windows of up to
  history_len + 1 events, taken back from the most recent one, overlapping by one event, so
  every transition a -> b of the user's training sequence is a target exactly once. A batch is
  {"items": [B, L] inputs, "targets": [B, L] next items}, right-padded with PAD_IDX.
- `EventSamples` (retrieval, two-tower): one sample per training event with at least
  `min_history` earlier events of the same user; the history is the up to `history_len` events
  strictly before it (no leakage). A batch is {"history": [B, H], "lengths": [B],
  "targets": [B], "context": [B, C], "user": [B, U], "users": [B]}.

Both define `__getitems__`, so a DataLoader with a batch size fetches a batch in one call; pass
`collate_fn=keep_batch`. `EpochSampler` shuffles with a seed per epoch, so a run resumed at an
epoch boundary sees the same batches as an uninterrupted one. Its indices carry the epoch
(`epoch * n + i`), so datasets can vary per epoch even inside worker processes: with a
`TieShuffle`, events of a user with equal timestamps are reordered at random every epoch.
"""

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from recstack.schema import PAD_IDX
from recstack.training.data.event_arrays import EventArrays


def keep_batch(batch: dict) -> dict:
    """collate_fn for datasets that already return whole batches."""
    return batch


def _gather(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[B, max(lengths)] rows flat[starts[i] : starts[i] + lengths[i]], right-padded with PAD."""
    width = max(int(lengths.max()), 1) if lengths.size else 1
    offsets = np.arange(width)
    index = starts[:, None] + offsets[None, :]
    valid = offsets[None, :] < lengths[:, None]
    out = np.where(valid, flat[np.where(valid, index, 0)], PAD_IDX)
    return out.astype(np.int64)


def user_windows(indptr: np.ndarray, history_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts [W], lengths [W]) of windows of 2..history_len + 1 events each."""
    counts = np.diff(indptr)
    step = history_len
    n_windows = np.where(counts >= 2, (np.maximum(counts - 1, 0) + step - 1) // step, 0)
    user = np.repeat(np.arange(counts.shape[0]), n_windows)
    k = np.arange(n_windows.sum()) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    end = indptr[user + 1] - k * step  # exclusive end of window k (k = 0: the most recent)
    start = np.maximum(end - (step + 1), indptr[user])
    return start.astype(np.int64), (end - start).astype(np.int64)


class TieShuffle:
    """Per-epoch item order in which each run of a user's equal-timestamp events is permuted."""

    def __init__(self, arrays: EventArrays, seed: int) -> None:
        self.arrays, self.seed = arrays, seed
        self._cached: tuple[int, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {"arrays": self.arrays, "seed": self.seed, "_cached": None}

    def items(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            indptr, ts = np.asarray(self.arrays.user_indptr), np.asarray(self.arrays.ts)
            new_user = np.zeros(ts.shape[0], dtype=bool)
            new_user[indptr[:-1][indptr[:-1] < ts.shape[0]]] = True
            new_group = new_user | np.concatenate([[True], ts[1:] != ts[:-1]])
            group = np.cumsum(new_group)  # [E] id of the (user, ts) run, non-decreasing
            noise = np.random.default_rng([self.seed, epoch, 7]).random(ts.shape[0])
            self._cached = (epoch, np.asarray(self.arrays.items)[np.lexsort((noise, group))])
        return self._cached[1]


def _split(indices: list[int], n: int) -> tuple[int, np.ndarray]:
    """(epoch, sample indices) from EpochSampler's `epoch * n + i` encoding."""
    raw = np.asarray(indices, dtype=np.int64)
    return int(raw[0] // n) if raw.size else 0, raw % n


class WindowSamples(Dataset):
    def __init__(
        self, arrays: EventArrays, history_len: int, order: TieShuffle | None = None
    ) -> None:
        self.arrays = arrays
        self.history_len = history_len
        self.order = order
        self.starts, self.lengths = user_windows(np.asarray(arrays.user_indptr), history_len)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        epoch, idx = _split(indices, len(self))
        items = self.arrays.items if self.order is None else self.order.items(epoch)
        seq = _gather(items, self.starts[idx], self.lengths[idx])  # [B, L + 1]
        return {
            "items": torch.from_numpy(seq[:, :-1].copy()),
            "targets": torch.from_numpy(seq[:, 1:].copy()),
        }


class EventSamples(Dataset):
    def __init__(
        self,
        arrays: EventArrays,
        user_codes: np.ndarray,
        history_len: int,
        min_history: int = 1,
        order: TieShuffle | None = None,
    ) -> None:
        self.arrays = arrays
        self.order = order
        self.user_codes = user_codes  # [n_users, U]
        self.history_len = history_len
        indptr = np.asarray(arrays.user_indptr)
        counts = np.diff(indptr)
        self.user_of = np.repeat(np.arange(counts.shape[0]), counts)  # [E] user of each event
        position = np.arange(indptr[-1]) - np.repeat(indptr[:-1], counts)
        self.events = np.flatnonzero(position >= min_history)  # [n] the samples' events
        first = indptr[:-1][self.user_of[self.events]]  # [n] index of the user's first event
        # [n] events in each sample's history: up to history_len, back to the user's first
        self.history_lengths = self.events - np.maximum(self.events - history_len, first)

    def __len__(self) -> int:
        return int(self.events.shape[0])

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        epoch, idx = _split(indices, len(self))
        items = self.arrays.items if self.order is None else self.order.items(epoch)
        event, lengths = self.events[idx], self.history_lengths[idx]
        history = _gather(items, event - lengths, lengths)
        user = self.user_of[event]
        return {
            "history": torch.from_numpy(history),
            "lengths": torch.from_numpy(lengths),
            "targets": torch.from_numpy(items[event].astype(np.int64)),
            "context": torch.from_numpy(self.arrays.context[event].astype(np.int64)),
            "user": torch.from_numpy(self.user_codes[user].astype(np.int64)),
            "users": torch.from_numpy(user.astype(np.int64)),
        }


class EpochSampler(Sampler[int]):
    """A permutation of range(n) drawn from (seed, epoch), yielded as epoch * n + i (datasets
    decode it with `_split`); Lightning calls set_epoch.

    With `lengths` and `batch_size`, samples of similar length end up in the same batch (less
    padding): the shuffled order is cut into pools of `pool_batches` batches, each pool is
    sorted by length and cut into batches, and the batches are shuffled.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        lengths: np.ndarray | None = None,
        batch_size: int = 1,
        pool_batches: int = 16,
    ) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.lengths, self.batch_size, self.pool_batches = lengths, batch_size, pool_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter((self.order() + self.epoch * self.n).tolist())

    def order(self) -> np.ndarray:
        """This epoch's permutation of range(n)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n)
        if self.lengths is None or self.batch_size <= 1:
            return order
        pool = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, self.n, pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            ]
        full = [b for b in batches if len(b) == self.batch_size]
        rest = [b for b in batches if len(b) < self.batch_size]  # at most one per pool, kept last
        picked = [full[i] for i in rng.permutation(len(full))] + rest
        return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
