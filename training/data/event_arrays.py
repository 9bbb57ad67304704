"""The training events as flat arrays on disk, memory-mapped by every process and worker.

`write_event_arrays` turns the TRAIN events of a split (time order per user) into .npy files:

    user_indptr.npy [n_users + 1] int64   user u's events are rows indptr[u]:indptr[u + 1]
    items.npy       [E] int32             item_idx
    ts.npy          [E] int64             timestamps (s)
    context.npy     [E, C] int16          context codes (features.context_codes), C >= 2

`EventArrays.open(path)` maps them read-only (np.load(mmap_mode="r")): DataLoader workers share
the page cache instead of each holding a copy of the log, and pickling an `EventArrays` sends
only its path. The directory is written to a temp dir and renamed, keyed by the dataset's content
hash, so concurrent ranks and stale caches never see half-written files.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from recstack.schema import ITEM_IDX, TS, USER_IDX

FILES = ("user_indptr", "items", "ts", "context")


@dataclass
class EventArrays:
    path: Path
    _arrays: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: Path) -> "EventArrays":
        return cls(Path(path))

    def _get(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    def __getstate__(self) -> dict:  # workers re-open the maps instead of receiving copies
        return {"path": self.path, "_arrays": {}}

    @property
    def user_indptr(self) -> np.ndarray:
        return self._get("user_indptr")

    @property
    def items(self) -> np.ndarray:
        return self._get("items")

    @property
    def ts(self) -> np.ndarray:
        return self._get("ts")

    @property
    def context(self) -> np.ndarray:
        return self._get("context")

    @property
    def n_events(self) -> int:
        return int(self.items.shape[0])


def arrays_complete(path: Path) -> bool:
    return all((Path(path) / f"{name}.npy").exists() for name in FILES)


def write_event_arrays(events: pl.DataFrame, context: np.ndarray, n_users: int, out: Path) -> Path:
    """Write `events` (user_idx, item_idx sorted by user then time) and their context codes.

    Does nothing when `out` already holds a complete set (it is keyed by content).
    """
    out = Path(out)
    if arrays_complete(out):
        return out
    users = events[USER_IDX].to_numpy().astype(np.int64)
    indptr = np.searchsorted(users, np.arange(n_users + 1), side="left").astype(np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        np.save(tmp / "user_indptr.npy", indptr)
        np.save(tmp / "items.npy", events[ITEM_IDX].to_numpy().astype(np.int32))
        np.save(tmp / "ts.npy", events[TS].to_numpy().astype(np.int64))
        np.save(tmp / "context.npy", context.astype(np.int16))
        try:
            os.rename(tmp, out)
        except OSError:  # another rank renamed its copy first: same content, keep theirs
            if not arrays_complete(out):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
