"""Sample queries of the ANN index: what serving will really search with.

    user_tower_queries(artifact, data, n) -> [n, d]   two-tower: the exported user tower
                                                     (onnxruntime, serving's own encoder) on
                                                     real histories of the dataset
    item_queries(unit, popularity, n) -> [n, d]       SASRec's similar items: unit item
                                                     vectors of items drawn by popularity

A two-tower query is a user drawn uniformly, with every event but the last as the history and
the last event's time and context as the request context: the request that predicts it.
"""

import numpy as np
import polars as pl

from recstack.artifact import Artifact
from recstack.dataset_dir import PreparedDataset
from recstack.feature_codes import TS_KINDS
from recstack.query import encode
from recstack.schema import INTERACTIONS_FILE, ITEM_IDX, TS, USER_ID, USER_IDX

SEED = 0


def _histories(data: PreparedDataset, users: np.ndarray, context: list[str]) -> pl.DataFrame:
    """One row per user in `users`: item_idx list in time order, the last event's ts and
    context (the interactions are sorted by user and time)."""
    events = (
        pl.scan_parquet(data.path / INTERACTIONS_FILE)
        .select(USER_IDX, ITEM_IDX, TS, *context)
        .filter(pl.col(USER_IDX).is_in(pl.Series(users).implode()))
        .collect()
    )
    return (
        events.with_columns(pl.col(context).cast(pl.String))
        .group_by(USER_IDX, maintain_order=True)
        .agg(pl.col(ITEM_IDX).slice(0, pl.len() - 1), pl.col(TS, *context).last())
        .join(data.users.select(USER_IDX, pl.col(USER_ID).cast(pl.String)), on=USER_IDX)
    )


def user_tower_queries(artifact: Artifact, data: PreparedDataset, n: int) -> np.ndarray:
    """User-tower outputs [min(n, users), d] for users drawn uniformly without replacement."""
    rng = np.random.default_rng(SEED)
    users = np.sort(rng.choice(data.n_users, min(n, data.n_users), replace=False))
    specs = (artifact.features or {}).get("context", [])
    context = [s["name"] for s in specs if s["kind"] not in TS_KINDS]  # hour/weekday read ts
    rows = _histories(data, users, context)
    return encode(
        artifact,
        rows[ITEM_IDX].to_list(),
        [{TS: r[TS], **{c: r[c] for c in context}} for r in rows.iter_rows(named=True)],
        rows[USER_ID].to_list(),
    )


def item_queries(unit: np.ndarray, popularity: np.ndarray, n: int) -> np.ndarray:
    """Unit item vectors [min(n, items with events), d], items drawn by popularity without
    replacement (row PAD of `unit` and `popularity` unused)."""
    weights = popularity[1:] / popularity[1:].sum()
    size = min(n, int((weights > 0).sum()))
    items = np.random.default_rng(SEED).choice(len(weights), size, replace=False, p=weights) + 1
    return unit[np.sort(items)]
