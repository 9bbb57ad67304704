"""Raw-log sources. Each source returns a `RawLog`; `recstack data prepare` takes it from there.

Contract for every source:
- `interactions`: a polars LazyFrame with optional `row` (raw order, from the scan's
  `row_index_name` so that prepare's per-user-range filters push down into the scan; prepare
  adds it when absent), `user_id`, `item_id` (Int64 for MovieLens, String for
  tokens), `ts` (Int64 seconds, UTC), optional `rating` (Float32) and any context columns
  (e.g. `device`). Rows in the raw file order; no cleaning (prepare does it and reports it).
- `ts_unit`: "seconds", or "ordinal" for a source without times (`seqlines:`): ts is then the
  event's position in its user's sequence, and prepare records that in the manifest
  (docs/architecture.md §3).
- `items`: None or a DataFrame keyed by `item_id` (same dtype) with feature columns
  (`title`, `genres` list[str], `year` Int16 for MovieLens).
- `users`: None or a DataFrame keyed by `user_id` with attribute columns
  (`gender`, `age`, `occupation`, `zip` for MovieLens).
- `source`: one human-readable line saying exactly where the data came from.
Bad input raises `recstack.errors.DataError` with a one-line message naming file and column.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

TS_SECONDS, TS_ORDINAL = "seconds", "ordinal"  # RawLog.ts_unit


@dataclass
class RawLog:
    interactions: pl.LazyFrame
    items: pl.DataFrame | None
    users: pl.DataFrame | None
    source: str
    files: list[Path] = field(default_factory=list)  # raw files read, for the manifest
    ts_unit: Literal["seconds", "ordinal"] = TS_SECONDS
