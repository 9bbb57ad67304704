"""The users, histories and targets one evaluation runs on (docs/architecture.md §5).

Torch-free, so training's evaluator and serving's pipeline evaluation read the same protocol.
`stored_split` adds the `split` column from a prepared dataset's stored split codes
(`apply_split` in datasets/splits.py can also reshuffle ties); `build_eval_set` turns
interactions with that column into CSR arrays:

- target="valid": history = the user's TRAIN events, targets = the user's VALID events;
- target="test":  history = the user's TRAIN + VALID events, targets = the user's TEST events.

Leave-one-out gives one target per user; the temporal split gives every event of the user in
the target period (several targets per user). Histories are in time order and contain only
events strictly before the user's first target (checked: a split column that puts a history
event after a target is refused). Within a user's targets, repeated items count once, and
targets the user already has in the history are dropped by default (full ranking masks seen
items, so such a target could never be hit; `drop_seen_targets=False` keeps them as certain
misses instead); users left without targets are not evaluated. Both counts are recorded.
"""

from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from recstack.errors import DataError
from recstack.schema import ITEM_IDX, PAD_IDX, SPLIT, SPLITS, TEST, TRAIN, TS, USER_IDX, VALID

TARGETS = ("valid", "test")
_HISTORY_CODES = {"valid": (TRAIN,), "test": (TRAIN, VALID)}
TARGET_CODE = {"valid": VALID, "test": TEST}
_POS = "_eval_pos"
_KEY = "_eval_key"


@dataclass(frozen=True)
class EvalSet:
    """Evaluated users with their histories and targets as CSR arrays (all numpy int64).

    users [U] sorted user_idx; history_indptr [U + 1] / history_items [H] the events strictly
    before the targets, in time order (repeats kept); target_indptr [U + 1] / target_items [T]
    distinct target items (unseen unless drop_seen_targets=False), in time order of first
    occurrence; every user has >= 1 target.
    item_popularity [n_items + 1]: number of distinct users with the item among the history events
    of *all* users (not only evaluated ones), used by beyond-accuracy metrics; n_history_users:
    number of users with at least one history event.
    """

    users: np.ndarray
    history_indptr: np.ndarray
    history_items: np.ndarray
    target_indptr: np.ndarray
    target_items: np.ndarray
    n_items: int
    item_popularity: np.ndarray
    n_history_users: int
    target: str = "test"
    n_users_dropped_no_history: int = 0  # users with targets but fewer than min_history events
    n_targets_dropped_seen: int = 0  # distinct targets dropped: already in the user's history
    history_ts: np.ndarray | None = None  # [H] int64 timestamps of history_items

    @property
    def n_users(self) -> int:
        return int(self.users.shape[0])

    @property
    def history_lengths(self) -> np.ndarray:
        """[U] number of history events per evaluated user."""
        return np.diff(self.history_indptr)

    @property
    def target_counts(self) -> np.ndarray:
        """[U] number of targets per evaluated user."""
        return np.diff(self.target_indptr)

    def history(self, row: int) -> np.ndarray:
        """[H] the history items of the user at position `row`, oldest first."""
        return self.history_items[self.history_indptr[row] : self.history_indptr[row + 1]]

    def targets(self, row: int) -> np.ndarray:
        """The distinct target items of the user at position `row`."""
        return self.target_items[self.target_indptr[row] : self.target_indptr[row + 1]]

    def slice(self, start: int, stop: int) -> "EvalSet":
        """Users start..stop-1 (e.g. one rank's shard); popularity stays that of all users."""
        h0, h1 = self.history_indptr[start], self.history_indptr[stop]
        t0, t1 = self.target_indptr[start], self.target_indptr[stop]
        return replace(
            self,
            users=self.users[start:stop],
            history_indptr=self.history_indptr[start : stop + 1] - h0,
            history_items=self.history_items[h0:h1],
            history_ts=None if self.history_ts is None else self.history_ts[h0:h1],
            target_indptr=self.target_indptr[start : stop + 1] - t0,
            target_items=self.target_items[t0:t1],
        )


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {sorted(SPLITS)}")


def stored_split(interactions: pl.DataFrame, split: str) -> pl.DataFrame:
    """The interactions with a `split` column holding the stored codes of `split` (loo or
    temporal), as `recstack data prepare` cut them."""
    check_split(split)
    if SPLITS[split] not in interactions.columns:
        raise DataError(
            f"interactions have no {SPLITS[split]!r} column; re-run `recstack data prepare`"
        )
    codes = interactions[SPLITS[split]]
    if codes.len() and codes.null_count() == codes.len():  # ordinal ts: no times to cut
        raise DataError(
            f"this dataset has no {split} split: its ts are positions in each sequence, not "
            "times (the manifest's `time`, docs/architecture.md §3); use split loo"
        )
    return interactions.with_columns(pl.col(SPLITS[split]).alias(SPLIT))


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise DataError(f"unknown evaluation target {target!r}; use one of {list(TARGETS)}")


def _in_time_order(frame: pl.DataFrame, only_needed: bool = False) -> pl.DataFrame:
    """Rows sorted by (user, ts, given order) with a `_POS` column holding the sorted position.

    only_needed: keep just user, item, ts and split (cheaper to sort).
    """
    if SPLIT not in frame.columns:
        raise DataError(
            f"interactions have no {SPLIT!r} column; add it with stored_split or "
            "recstack.datasets.splits.apply_split first"
        )
    columns = [USER_IDX, ITEM_IDX, TS, SPLIT]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"interactions lack columns {missing}; expected a prepared dataset")
    if only_needed:
        frame = frame.select(columns)
    ordered = frame.with_row_index(_POS).sort([USER_IDX, TS, _POS])
    return ordered.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_POS))


def history_frame(frame: pl.DataFrame, target: str) -> pl.DataFrame:
    """The events a model may be fitted on when evaluating `target`, in time order per user.

    target="valid": TRAIN events; target="test": TRAIN + VALID events (of all users). All columns
    of `frame` are kept.
    """
    _check_target(target)
    ordered = _in_time_order(frame)
    return ordered.filter(pl.col(SPLIT).is_in(_HISTORY_CODES[target])).drop(_POS)


def build_eval_set(
    frame: pl.DataFrame,
    target: str,
    n_items: int,
    min_history: int = 1,
    drop_seen_targets: bool = True,
) -> EvalSet:
    """Evaluated users, histories and targets for `target` in {"valid", "test"}.

    Args:
        frame: interactions with user_idx, item_idx, ts and the `split` column of `apply_split`.
        target: "valid" (history = TRAIN) or "test" (history = TRAIN + VALID).
        n_items: catalogue size; item_idx must lie in 1..n_items.
        min_history: users with fewer history events are not evaluated (counted in
            `n_users_dropped_no_history`). The default 1 drops users that first appear in the
            target period of a temporal split (a cold-start problem, not a ranking one).
        drop_seen_targets: drop targets already in the user's history (repeat consumption);
            False keeps them, and since seen items are masked they count as misses.
    """
    _check_target(target)
    ordered = _in_time_order(frame, only_needed=True)
    items = ordered[ITEM_IDX]
    if ordered.height and (items.min() < 1 or items.max() > n_items):
        raise DataError(
            f"item_idx outside 1..{n_items} (found {items.min()}..{items.max()}); "
            "n_items must be the dataset's catalogue size"
        )
    stride = n_items + 1
    key = (pl.col(USER_IDX).cast(pl.Int64) * stride + pl.col(ITEM_IDX).cast(pl.Int64)).alias(_KEY)
    hist = ordered.filter(pl.col(SPLIT).is_in(_HISTORY_CODES[target])).with_columns(key)
    tgt = ordered.filter(pl.col(SPLIT) == TARGET_CODE[target]).with_columns(key)

    # No leakage: every history event of a user precedes every one of its targets.
    last_hist = hist.group_by(USER_IDX).agg(pl.col(_POS).max().alias("_last"))
    first_tgt = tgt.group_by(USER_IDX).agg(pl.col(_POS).min().alias("_first"))
    bad = last_hist.join(first_tgt, on=USER_IDX).filter(pl.col("_last") > pl.col("_first"))
    if bad.height:
        raise DataError(
            f"split column puts history events after {target} targets for {bad.height} users "
            f"(e.g. user_idx {bad[USER_IDX][0]}); recompute it with apply_split"
        )

    # Distinct (unseen) targets, in time order of first occurrence.
    tgt = tgt.unique(_KEY, keep="first", maintain_order=True)
    hist_keys = hist[_KEY].unique()
    tgt_unseen = tgt.filter(~pl.col(_KEY).is_in(hist_keys.implode())) if drop_seen_targets else tgt
    n_seen = tgt.height - tgt_unseen.height

    hist_len = hist.group_by(USER_IDX).agg(pl.len().alias("_n"))
    candidates = (
        tgt_unseen.select(pl.col(USER_IDX).unique())
        .join(hist_len, on=USER_IDX, how="left")
        .with_columns(pl.col("_n").fill_null(0))
    )
    kept = candidates.filter(pl.col("_n") >= min_history)[USER_IDX]
    users = np.sort(kept.to_numpy().astype(np.int64))
    n_dropped = candidates.height - users.shape[0]

    hist_eval = hist.filter(pl.col(USER_IDX).is_in(kept.implode()))
    tgt_eval = tgt_unseen.filter(pl.col(USER_IDX).is_in(kept.implode()))
    history_indptr, history_items = _csr(hist_eval, users)
    target_indptr, target_items = _csr(tgt_eval, users)

    pairs = hist.select(_KEY).unique()[_KEY].to_numpy()
    popularity = np.bincount(pairs % stride, minlength=stride).astype(np.int64)
    popularity[PAD_IDX] = 0
    return EvalSet(
        users=users,
        history_indptr=history_indptr,
        history_items=history_items,
        target_indptr=target_indptr,
        target_items=target_items,
        n_items=n_items,
        item_popularity=popularity,
        n_history_users=int(hist[USER_IDX].n_unique()),
        target=target,
        n_users_dropped_no_history=int(n_dropped),
        n_targets_dropped_seen=int(n_seen),
        history_ts=hist_eval[TS].to_numpy().astype(np.int64),
    )


def _csr(rows: pl.DataFrame, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indptr [U + 1], items) for rows already sorted by user then time, restricted to `users`."""
    row_users = rows[USER_IDX].to_numpy().astype(np.int64)
    indptr = np.searchsorted(row_users, users, side="left").astype(np.int64)
    indptr = np.append(indptr, np.int64(row_users.shape[0]))
    return indptr, rows[ITEM_IDX].to_numpy().astype(np.int64)
