"""Data-quality cleaning for raw logs: every dropped row is counted with its reason.

The steps run in this order on a frame with the raw columns plus `row` (raw order):
null ids -> impossible timestamps -> exact duplicates -> items missing from the catalogue ->
non-monotone timestamps (counted; dropped only with policy "drop") -> users above an
events-per-second rate -> rating threshold -> k-core. The last three are off by default.
"""

import time
from dataclasses import dataclass
from typing import Literal

import polars as pl

from recstack.errors import DataError
from recstack.schema import ITEM_ID, RATING, ROW, TS, USER_ID

FUTURE_SLACK_S = 86_400  # a timestamp more than a day after "now" is impossible


@dataclass
class QualityConfig:
    """Cleaning rules.

    Args:
        non_monotone: rows whose timestamp is earlier than an earlier row of the same user in
            file order. "sort" (default) keeps them and sorts by time; "drop" removes them, for
            logs whose file order is authoritative (e.g. an append-only event stream).
        max_events_per_second: drop users whose events / max(1, last_ts - first_ts) exceeds
            this rate (bots, scripted imports). None = off.
        require_catalogue: drop interactions whose item is missing from the item catalogue
            (only when a catalogue is given).
        min_rating: keep only ratings >= this (explicit -> implicit feedback). None = keep all.
        k_core: iteratively keep users and items with at least k interactions. None = off.
    """

    non_monotone: Literal["sort", "drop"] = "sort"
    max_events_per_second: float | None = None
    require_catalogue: bool = True
    min_rating: float | None = None
    k_core: int | None = None

    def __post_init__(self) -> None:
        if self.non_monotone not in ("sort", "drop"):
            raise DataError(f"non_monotone must be 'sort' or 'drop', got {self.non_monotone!r}")
        if self.max_events_per_second is not None and self.max_events_per_second <= 0:
            raise DataError(f"max_events_per_second must be > 0, got {self.max_events_per_second}")
        if self.k_core is not None and self.k_core < 1:
            raise DataError(f"k_core must be >= 1, got {self.k_core}")


class QualityLog:
    """Counts dropped and flagged rows per reason, summed over partitions -> quality_report.json."""

    def __init__(self):
        self.rows_read = 0
        self.dropped: dict[str, int] = {}
        self.flagged: dict[str, int] = {}

    def count_dropped(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def drop(self, reason: str, before: pl.DataFrame, after: pl.DataFrame) -> pl.DataFrame:
        self.count_dropped(reason, before.height - after.height)
        return after

    def flag(self, reason: str, count: int) -> None:
        self.flagged[reason] = self.flagged.get(reason, 0) + count

    def report(self) -> dict:
        dropped = sum(self.dropped.values())
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_read - dropped,
            "rows_dropped": dropped,
            "dropped": self.dropped,
            "flagged": self.flagged,
        }


def _first_of_duplicates(frame: pl.DataFrame, columns: list[str]) -> pl.Series:
    """False for rows that repeat an earlier row exactly (in raw order), True otherwise.

    Exact, with little memory: rows are compared by a 64-bit hash first, and only rows whose
    hash occurs more than once are compared column by column.
    """
    candidate = frame.select(pl.struct(columns).hash().is_duplicated()).to_series()
    if not candidate.any():
        return ~candidate
    exact = frame.filter(candidate).select(pl.struct(columns).is_first_distinct()).to_series()
    return ~candidate.scatter(candidate.arg_true(), exact.not_()).alias("first")


def _non_monotone(frame: pl.DataFrame) -> pl.Series:
    """True where ts is earlier than some earlier row (in raw order) of the same user."""
    previous_max = pl.col(TS).cum_max().shift(1).over(USER_ID, order_by=ROW)
    return frame.select((pl.col(TS) < previous_max).fill_null(False)).to_series()


def clean(
    frame: pl.DataFrame,
    config: QualityConfig,
    log: QualityLog,
    catalogue: pl.Series | None = None,
    now: int | None = None,
) -> pl.DataFrame:
    """Apply the per-user cleaning steps to all events of a set of users; count into `log`.

    k-core is global (items span users) and runs afterwards over all partitions (`k_core_pass`).
    """
    now = int(time.time()) if now is None else now
    raw_columns = [c for c in frame.columns if c != ROW]

    frame = log.drop("null_ids", frame, frame.drop_nulls([USER_ID, ITEM_ID]))
    valid_ts = pl.col(TS).is_not_null() & (pl.col(TS) >= 0) & (pl.col(TS) <= now + FUTURE_SLACK_S)
    frame = log.drop("impossible_timestamps", frame, frame.filter(valid_ts))
    frame = log.drop(
        "exact_duplicates", frame, frame.filter(_first_of_duplicates(frame, raw_columns))
    )

    if catalogue is not None and config.require_catalogue:
        known = frame[ITEM_ID].is_in(catalogue.implode())
        frame = log.drop("items_missing_from_catalogue", frame, frame.filter(known))

    late = _non_monotone(frame)
    log.flag("non_monotone_timestamps", int(late.sum()))
    if config.non_monotone == "drop":
        frame = log.drop("non_monotone_timestamps", frame, frame.filter(~late))

    if config.max_events_per_second is not None:
        span = (pl.col(TS).max() - pl.col(TS).min()).over(USER_ID).clip(lower_bound=1)
        rate_ok = pl.len().over(USER_ID) / span <= config.max_events_per_second
        frame = log.drop("users_above_event_rate", frame, frame.filter(rate_ok))

    if config.min_rating is not None:
        frame = log.drop(
            "below_min_rating", frame, frame.filter(pl.col(RATING) >= config.min_rating)
        )
    return frame


def k_core_pass(frame: pl.DataFrame, item_counts: pl.DataFrame, k: int) -> pl.DataFrame:
    """One k-core step on a partition: drop items with < k events overall, then users with < k.

    item_counts: (item_id, len) over all partitions. Repeat over all partitions until a pass
    drops nothing; the fixed point is the k-core.
    """
    frequent = item_counts.filter(pl.col("len") >= k)[ITEM_ID]
    frame = frame.filter(pl.col(ITEM_ID).is_in(frequent.implode()))
    return frame.filter(pl.len().over(USER_ID) >= k)
