"""Seed the online store's histories from a prepared dataset (the service's cold start).

Each user's history becomes their last `max_history` items of the dataset, in time order (ties
in the dataset's stable raw order), replacing what the store held for that user. Idempotent:
the dataset's content hash is recorded as meta `seeded:<hash>` and a second call skips.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl

from recstack.datasets.dataset_dir import load_dataset
from recstack.manifest import CONTENT_HASH
from recstack.schema import ITEM_ID, ITEM_IDX, TS, USER_ID, USER_IDX
from recstack.serving.store.base import OnlineStore

SEEDED_META = "seeded:{}"
BATCH_USERS = 2_000  # users per store write


def seed_from_dataset(store: OnlineStore, dataset_dir: Path, max_history: int) -> int:
    """Write each user's last `max_history` items of a prepared dataset as their history.

    Args:
        store: the online store.
        dataset_dir: a `recstack data prepare` output (its manifest hashes are verified).
        max_history: items per user (the store also keeps at most its own max_history).

    Returns the number of users written; 0 if this dataset was already seeded.
    """
    dataset = load_dataset(Path(dataset_dir), columns=[USER_IDX, ITEM_IDX, TS])
    marker = SEEDED_META.format(dataset.manifest[CONTENT_HASH])
    if store.get_meta(marker) is not None:
        return 0
    keep = min(max_history, store.max_history)
    users = dataset.users.select(USER_IDX, pl.col(USER_ID).cast(pl.String))
    items = dataset.items.select(ITEM_IDX, pl.col(ITEM_ID).cast(pl.String))
    histories = (
        dataset.interactions.with_row_index("_order")
        .sort([USER_IDX, TS, "_order"])  # the file is in this order already; stable regardless
        .group_by(USER_IDX, maintain_order=True)
        .agg(pl.col(ITEM_IDX).tail(keep))
        .explode(ITEM_IDX)
        .join(items, on=ITEM_IDX, how="left", maintain_order="left")
        .join(users, on=USER_IDX, how="left", maintain_order="left")
        .group_by(USER_ID, maintain_order=True)
        .agg(ITEM_ID)
    )
    written = 0
    for chunk in histories.iter_slices(BATCH_USERS):
        store.set_histories(dict(zip(chunk[USER_ID], chunk[ITEM_ID].to_list(), strict=True)))
        written += chunk.height
    store.set_meta(
        marker,
        json.dumps({"users": written, "dataset": str(dataset_dir), "at": int(time.time())}),
    )
    return written
