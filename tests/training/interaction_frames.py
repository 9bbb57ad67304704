"""Hand-made interaction frames for evaluator tests, shaped like a prepared dataset's."""

import polars as pl

from recstack.datasets.splits import global_temporal, leave_one_out
from recstack.schema import ITEM_IDX, TS, USER_IDX


def make_frame(sequences, times=None, cuts=None) -> pl.DataFrame:
    """Interactions of users 0..U-1 with both split columns.

    sequences[u]: user u's item_idx list in time order; times[u]: their timestamps (default
    10, 20, ...); cuts: (valid_from, test_from) of the temporal split (default: the 0.7 and
    0.85 "higher" quantiles of all timestamps).
    """
    rows = []
    for user, items in enumerate(sequences):
        ts = times[user] if times is not None else [10 * (j + 1) for j in range(len(items))]
        rows += [(user, item, int(t)) for item, t in zip(items, ts, strict=True)]
    frame = pl.DataFrame(
        rows, schema={USER_IDX: pl.Int32, ITEM_IDX: pl.Int32, TS: pl.Int64}, orient="row"
    ).sort(USER_IDX, TS, maintain_order=True)
    frame = frame.with_columns(leave_one_out(frame))
    if cuts is None:
        cuts = (int(frame[TS].quantile(q, "higher")) for q in (0.7, 0.85))
    return frame.with_columns(global_temporal(frame[TS], *cuts))
