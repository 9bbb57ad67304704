"""Train/validation/test splits (docs/architecture.md §5).

Both splits are stored as int8 code columns (`TRAIN`, `VALID`, `TEST`) in interactions.parquet,
whose rows are sorted by (user_idx, ts, original row order): equal timestamps keep the raw
log's order (stable tie-break). `apply_split` returns the frame a consumer evaluates on,
optionally with the ties shuffled by a seed (ML-100K has many equal timestamps, so which tied
event is held out is arbitrary: shuffles show the spread of every metric over that choice).
"""

import numpy as np
import polars as pl

from recstack.errors import DataError
from recstack.eval_set import check_split, stored_split
from recstack.schema import (
    SPLIT,
    SPLIT_LOO,
    SPLIT_TEMPORAL,
    TEST,
    TRAIN,
    TS,
    USER_IDX,
    VALID,
)

_TIE_KEY = "_tie_key"


def leave_one_out(frame: pl.DataFrame) -> pl.Series:
    """Split codes for rows already in time order per user: last -> TEST, second last -> VALID.

    Users with one event keep it in TRAIN only; users with two get TRAIN + TEST (no validation
    target), so every evaluated user has at least one training event.
    """
    pos_from_end = frame.select(
        (pl.int_range(pl.len()).reverse().over(USER_IDX)).alias("k"),
        pl.len().over(USER_IDX).alias("n"),
    )
    k, n = pos_from_end["k"], pos_from_end["n"]
    code = (
        pl.select(
            pl.when((k == 0) & (n >= 2))
            .then(TEST)
            .when((k == 1) & (n >= 3))
            .then(VALID)
            .otherwise(TRAIN)
            .cast(pl.Int8)
        )
        .to_series()
        .alias(SPLIT_LOO)
    )
    return code


def check_fractions(valid_fraction: float, test_fraction: float) -> None:
    if not (
        0 < valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1
    ):
        raise DataError(
            f"temporal split fractions valid={valid_fraction}, test={test_fraction} must be in "
            "(0, 1) and sum to less than 1"
        )


def global_temporal(ts: pl.Series, valid_from: int, test_from: int) -> pl.Series:
    """Split codes for one global time cut: ts >= test_from -> TEST, >= valid_from -> VALID."""
    return (
        pl.select(
            pl.when(ts >= test_from)
            .then(TEST)
            .when(ts >= valid_from)
            .then(VALID)
            .otherwise(TRAIN)
            .cast(pl.Int8)
        )
        .to_series()
        .alias(SPLIT_TEMPORAL)
    )


def apply_split(
    interactions: pl.DataFrame, split: str = "loo", tie_seed: int | None = None
) -> pl.DataFrame:
    """The interactions in time order per user with a `split` code column.

    tie_seed=None: the stored split (stable tie-break by raw row order).
    tie_seed=s: events with equal (user, ts) are put in a random order drawn from `s`, and the
    leave-one-out split is recomputed on that order (the temporal split does not depend on ties).
    """
    if tie_seed is None or split == "temporal":
        return stored_split(interactions, split)
    check_split(split)
    key = np.random.default_rng(tie_seed).random(interactions.height)
    shuffled = (
        interactions.with_columns(pl.Series(_TIE_KEY, key))
        .sort([USER_IDX, TS, _TIE_KEY], maintain_order=True)
        .drop(_TIE_KEY)
    )
    return shuffled.with_columns(leave_one_out(shuffled).alias(SPLIT))
