"""What the training data looked like, in a few numbers: the reference `recstack monitor`
compares logged traffic with (docs/architecture.md §3, §7).

`recstack data prepare` (and `data extend`) store a `DataProfile` in the dataset manifest under
`profile`; `recstack export` copies it into the artifact manifest (or computes it from the
dataset when an older manifest lacks it). It is a pair of histograms, never per-item or
per-user rows, so it stays a few hundred bytes for any catalogue:

- **item popularity**: the items ranked by their events in the data (ties: lower item_idx
  first) and cut into buckets by rank, the top 1 %, the next 4 %, ... of the catalogue
  (`POPULARITY_EDGES`, fractions of n_items); the histogram is the share of events per bucket.
  Which bucket an item is in comes from the artifact's `popularity.npy` (the same counts) via
  `popularity_buckets`.
- **user activity**: events per user per UTC day (a user-day with no event does not count) in
  log-spaced bins 1, 2, 3-4, 5-8, ... (`ACTIVITY_EDGES`, lower bounds); the histogram is the
  share of user-days per bin. Per day rather than per user, so a window of a day or more
  compares with data that spans a year.
"""

from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recstack.errors import DataError
from recstack.schema import INTERACTIONS_FILE, ITEM_IDX, PAD_IDX, TS, USER_IDX

PROFILE = "profile"  # the dataset manifest's key
DAY_S = 86_400
POPULARITY_EDGES = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)  # upper rank fraction of each bucket
ACTIVITY_EDGES = (1, 2, 3, 5, 9, 17, 33, 65, 129)  # lower bound of each bin, events per day


class Histogram(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    edges: list[float]  # popularity: upper rank fractions; activity: lower bounds
    share: list[float]  # per bucket, sums to 1
    total: int = Field(ge=0)  # events (popularity) or user-days (activity) counted


class DataProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    of: str = "all interactions"
    item_popularity: Histogram
    user_activity: Histogram | None  # None: the data's ts are sequence positions, not seconds


def popularity_buckets(counts: np.ndarray) -> np.ndarray:
    """[n_items + 1] bucket (0 = most popular) of each item_idx given its event counts
    (`popularity.npy`); PAD gets -1."""
    n_items = counts.shape[0] - 1
    idx = np.arange(1, n_items + 1)
    order = idx[np.lexsort((idx, -counts[1:]))]  # by count descending, then item_idx
    cuts = np.ceil(np.asarray(POPULARITY_EDGES) * n_items).astype(np.int64)
    buckets = np.full(n_items + 1, -1, dtype=np.int64)
    buckets[order] = np.searchsorted(cuts, np.arange(n_items), side="right")
    return buckets


def shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return (counts / total).tolist() if total else [0.0] * len(counts)


def popularity_histogram(ranking: np.ndarray, events: np.ndarray) -> Histogram:
    """The share of `events` (events per item_idx, [n_items + 1]) per popularity bucket, the
    buckets cut by `ranking` (the data's events per item_idx)."""
    buckets = popularity_buckets(ranking)
    real = buckets >= 0
    per_bucket = np.bincount(buckets[real], weights=events[real], minlength=len(POPULARITY_EDGES))
    return Histogram(
        edges=list(POPULARITY_EDGES), share=shares(per_bucket), total=int(events[real].sum())
    )


def activity_histogram(events_per_user_day: np.ndarray) -> Histogram:
    """The share of user-days per activity bin, from each user-day's event count (>= 1)."""
    per_bin, _ = np.histogram(events_per_user_day, bins=[*ACTIVITY_EDGES, np.inf])
    return Histogram(
        edges=list(ACTIVITY_EDGES), share=shares(per_bin), total=len(events_per_user_day)
    )


def profile_interactions(path: Path, n_items: int, ts_seconds: bool = True) -> DataProfile:
    """The profile of a dataset's interactions.parquet (read column-wise, lazily); without
    `ts_seconds` (ordinal times, docs/architecture.md §3) there are no days to count."""
    scan = pl.scan_parquet(path).select(USER_IDX, ITEM_IDX, TS)
    items = scan.group_by(ITEM_IDX).len().collect()
    activity = None
    if ts_seconds:
        days = scan.group_by(USER_IDX, pl.col(TS) // DAY_S).len().collect()["len"].to_numpy()
        activity = activity_histogram(days)
    counts = np.zeros(n_items + 1)
    counts[items[ITEM_IDX].to_numpy()] = items["len"].to_numpy()
    counts[PAD_IDX] = 0.0
    return DataProfile(
        item_popularity=popularity_histogram(counts, counts),
        user_activity=activity,
    )


def dataset_profile(path: Path, manifest: dict, n_items: int) -> DataProfile:
    """The dataset's stored profile, or one computed from its interactions when its manifest
    was written before profiles existed."""
    stored = manifest.get(PROFILE)
    if stored is None:
        ts_seconds = (manifest.get("time") or {}).get("ts_unit", "seconds") == "seconds"
        return profile_interactions(Path(path) / INTERACTIONS_FILE, n_items, ts_seconds)
    try:
        return DataProfile.model_validate(stored)
    except ValidationError as exc:
        raise DataError(
            f"{path}: the manifest's {PROFILE} block is malformed ({exc.error_count()} "
            "problem(s)); re-run `recstack data prepare`"
        ) from None
