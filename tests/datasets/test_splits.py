"""Split properties (hypothesis): LOO by time with a stable tie-break, temporal cut, tie shuffles."""

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from recstack.datasets.splits import apply_split, global_temporal, leave_one_out
from recstack.schema import (
    ITEM_IDX,
    ROW,
    SPLIT,
    SPLIT_LOO,
    SPLIT_TEMPORAL,
    TEST,
    TRAIN,
    TS,
    USER_IDX,
    VALID,
)

# (user, ts) pairs with few distinct timestamps, so ties are everywhere
events = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4)), min_size=1, max_size=60)


def _prepared(pairs) -> pl.DataFrame:
    """Rows as prepare writes them: sorted by (user, ts, raw row order), split columns added."""
    frame = pl.DataFrame(
        {USER_IDX: [u for u, _ in pairs], TS: [t for _, t in pairs]},
        schema={USER_IDX: pl.Int32, TS: pl.Int64},
    ).with_row_index(ROW)
    frame = frame.with_columns(pl.col(ROW).cast(pl.Int32).alias(ITEM_IDX)).sort([USER_IDX, TS, ROW])
    return frame.with_columns(leave_one_out(frame), global_temporal(frame[TS], 2, 4))


def _check_loo(frame: pl.DataFrame, split: str) -> None:
    for (_,), user in frame.group_by(USER_IDX):
        codes, ts = user[split].to_list(), user[TS].to_list()
        n = len(codes)
        assert codes.count(TEST) == (1 if n >= 2 else 0)
        assert codes.count(VALID) == (1 if n >= 3 else 0)
        if n >= 2:
            test = codes.index(TEST)
            assert ts[test] == max(ts)  # the test event is a latest event
            assert all(t <= ts[test] for t in ts)
        if n >= 3:
            valid = codes.index(VALID)
            train_ts = [t for t, c in zip(ts, codes, strict=True) if c == TRAIN]
            assert max(train_ts) <= ts[valid] <= ts[codes.index(TEST)]


@settings(max_examples=200, deadline=None)
@given(events)
def test_loo_holds_out_latest_with_stable_tie_break(pairs):
    frame = _prepared(pairs)
    _check_loo(frame, SPLIT_LOO)
    for (_,), user in frame.group_by(USER_IDX):
        if user.height >= 2:
            # stable: among events at the latest timestamp, the test one is last in raw order
            latest = user.filter(pl.col(TS) == user[TS].max())
            assert latest.filter(pl.col(SPLIT_LOO) == TEST)[ROW].item() == latest[ROW].max()


@settings(max_examples=100, deadline=None)
@given(events, st.integers(0, 2**31))
def test_tie_shuffles_keep_the_split_valid_and_only_reorder_ties(pairs, seed):
    frame = _prepared(pairs)
    shuffled = apply_split(frame, "loo", tie_seed=seed)
    _check_loo(shuffled, SPLIT)
    assert shuffled.sort(ROW)[ITEM_IDX].to_list() == frame.sort(ROW)[ITEM_IDX].to_list()
    assert shuffled.select(USER_IDX, TS).to_dicts() == frame.select(USER_IDX, TS).to_dicts()
    again = apply_split(frame, "loo", tie_seed=seed)
    assert again.equals(shuffled)  # seeded: reproducible


@settings(max_examples=100, deadline=None)
@given(events)
def test_temporal_split_is_one_global_cut(pairs):
    frame = _prepared(pairs)
    codes = frame.select(pl.col(SPLIT_TEMPORAL), pl.col(TS))
    assert (codes.filter(pl.col(SPLIT_TEMPORAL) == TRAIN)[TS] < 2).all()
    assert (codes.filter(pl.col(SPLIT_TEMPORAL) == VALID)[TS].is_between(2, 3)).all()
    assert (codes.filter(pl.col(SPLIT_TEMPORAL) == TEST)[TS] >= 4).all()
    assert apply_split(frame, "temporal")[SPLIT].equals(frame[SPLIT_TEMPORAL], check_names=False)
