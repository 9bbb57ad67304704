"""Each item's most frequent next items in the training sequences: the table behind SASRec's
transition term (`SASRecConfig.followers`, docs/architecture.md §6).

    items  [n_items + 1, k] int64    row j: the items that followed j, most frequent first
    counts [n_items + 1, k] float32  how often each did; PAD_IDX (0) and count 0 fill short rows

A pair counts once per occurrence: item b directly after item a in one user's time-ordered
events. Ties in count go to the smaller item_idx, so the table is deterministic.
"""

import numpy as np
import polars as pl

from recstack.schema import ITEM_IDX, PAD_IDX, USER_IDX


def follower_table(events: pl.DataFrame, n_items: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`events` (user_idx, item_idx; time order per user) -> (items, counts), as above."""
    items = np.full((n_items + 1, k), PAD_IDX, dtype=np.int64)
    counts = np.zeros((n_items + 1, k), dtype=np.float32)
    pairs = (
        events.select(pl.col(ITEM_IDX).shift(1).over(USER_IDX).alias("prev"), pl.col(ITEM_IDX))
        .drop_nulls()
        .group_by("prev", ITEM_IDX)
        .len("count")
        .sort(["prev", "count", ITEM_IDX], descending=[False, True, False])
        .with_columns(pl.int_range(pl.len()).over("prev").alias("rank"))
        .filter(pl.col("rank") < k)
    )
    rows, cols = pairs["prev"].to_numpy(), pairs["rank"].to_numpy()
    items[rows, cols] = pairs[ITEM_IDX].to_numpy()
    counts[rows, cols] = pairs["count"].to_numpy()
    return items, counts
