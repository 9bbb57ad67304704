"""Per-user metrics sliced by user segment, to audit whom a model serves well
(docs/architecture.md §5).

Segments:

- "activity": history length (events before the targets) in buckets 1-9, 10-19, 20-49, 50-99,
  100-249, 250+ (a "<1" bucket appears only when users without history were evaluated);
- every user attribute column in `users`: string / categorical / boolean columns and integer
  codes (e.g. ML-1M occupation) as they are, when they have at most `max_categories` distinct
  values (so zip codes are left out unless named); a numeric `age` column is bucketed as in
  ML-1M: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+. Missing values form the bucket "unknown".

Each row of the output is one (segment, bucket) with n_users and the mean of every metric over
those users (NaN entries, e.g. a user with an empty top-k list, are left out of the mean).
"""

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import polars as pl

from recstack.feature_codes import AGE_EDGES, bucket_labels, bucketize
from recstack.schema import AGE, USER_ID, USER_IDX

ACTIVITY = "activity"
ACTIVITY_EDGES = (1, 10, 20, 50, 100, 250)
UNKNOWN = "unknown"
SEGMENT, BUCKET, N_USERS = "segment", "bucket", "n_users"
_ORDER = "_order"


class PerUserMetrics(Protocol):
    """What slicing needs: per-user metric arrays aligned with the users' indices and history
    lengths (training's EvalResult, serving's pipeline evaluation)."""

    users: np.ndarray  # [U] user_idx
    history_lengths: np.ndarray  # [U] events before the targets
    per_user: Mapping[str, np.ndarray]  # metric -> [U]


def _attribute_columns(users: pl.DataFrame, max_categories: int) -> list[str]:
    chosen = []
    for name, dtype in users.schema.items():
        if name in (USER_IDX, USER_ID):
            continue
        if name == AGE and dtype.is_numeric():
            chosen.append(name)
        elif dtype in (pl.String, pl.Categorical, pl.Boolean) or isinstance(dtype, pl.Enum):
            if users[name].n_unique() <= max_categories:
                chosen.append(name)
        elif dtype.is_integer() and users[name].n_unique() <= max_categories:
            chosen.append(name)
    return chosen


def _labelled(values: pl.Series, edges: Sequence[int] | None) -> tuple[pl.Series, pl.Series]:
    """(label, sort order) per user; bucketed when `edges` is given."""
    if edges is not None:
        labels = np.array(bucket_labels(edges), dtype=object)
        filled = values.cast(pl.Float64).fill_null(np.nan).to_numpy()
        index = bucketize(np.nan_to_num(filled, nan=-np.inf), edges)
        missing = np.isnan(filled)
        label = np.where(missing, UNKNOWN, labels[index])
        order = np.where(missing, len(labels), index)
        return pl.Series(label.astype(str)), pl.Series(order.astype(np.int64))
    label = values.cast(pl.String).fill_null(UNKNOWN)
    return label, values.is_null().cast(pl.Int64)  # "unknown" sorts last


def segment_metrics(
    result: PerUserMetrics,
    users: pl.DataFrame | None = None,
    metrics: Sequence[str] | None = None,
    attributes: Sequence[str] | None = None,
    activity_edges: Sequence[int] = ACTIVITY_EDGES,
    max_categories: int = 50,
) -> pl.DataFrame:
    """Mean of per-user metrics by segment.

    Args:
        result: per-user metrics with their users and history lengths (an EvalResult).
        users: user table with user_idx and attribute columns; None = activity only.
        metrics: per-user metric names to average; None = all of result.per_user.
        attributes: attribute columns to slice by; None = chosen as in the module docstring.
        activity_edges: history-length bucket edges.
        max_categories: attribute columns with more distinct values are skipped (unless named).

    Returns:
        DataFrame with columns segment, bucket, n_users, then one column per metric, ordered by
        segment then bucket (buckets of activity and age in their natural order).
    """
    names = list(result.per_user) if metrics is None else list(metrics)
    frame = pl.DataFrame(
        {USER_IDX: result.users.astype(np.int64), **{m: result.per_user[m] for m in names}}
    )
    slices: list[tuple[str, pl.Series, pl.Series]] = []
    lengths = pl.Series(result.history_lengths.astype(np.int64))
    slices.append((ACTIVITY, *_labelled(lengths, activity_edges)))
    if users is not None:
        table = users.with_columns(pl.col(USER_IDX).cast(pl.Int64))
        joined = frame.select(USER_IDX).join(table, on=USER_IDX, how="left", maintain_order="left")
        columns = (
            _attribute_columns(table, max_categories) if attributes is None else list(attributes)
        )
        for name in columns:
            edges = AGE_EDGES if name == AGE and joined[name].dtype.is_numeric() else None
            slices.append((name, *_labelled(joined[name], edges)))

    parts = []
    means = [pl.col(m).fill_nan(None).mean().alias(m) for m in names]
    for name, label, order in slices:
        part = (
            frame.with_columns(label.alias(BUCKET), order.alias(_ORDER))
            .group_by(BUCKET, _ORDER)
            .agg(pl.len().cast(pl.Int64).alias(N_USERS), *means)
            .sort(_ORDER, BUCKET)
            .drop(_ORDER)
            .with_columns(pl.lit(name).alias(SEGMENT))
        )
        parts.append(part.select(SEGMENT, BUCKET, N_USERS, *names))
    return pl.concat(parts, how="vertical_relaxed")


def segments_to_dict(table: pl.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """{segment: {bucket: {"n_users": n, metric: mean}}} for JSON reports."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in table.iter_rows(named=True):
        segment, bucket = row.pop(SEGMENT), row.pop(BUCKET)
        out.setdefault(segment, {})[bucket] = row
    return out
