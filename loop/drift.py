"""The statistics of `recstack monitor` (docs/architecture.md §9): logged traffic in a window
against the training data's profile (recstack/data_profile.py) and the artifact's catalogue.

Distances between two histograms p (training or the window before) and q (the window):
- PSI = sum (q - p) ln(q / p), both floored at 1e-4 so an empty bucket stays finite; the
  usual reading is < 0.1 stable, 0.1-0.25 a moderate shift, > 0.25 a large one.
- JS: the Jensen-Shannon distance (scipy, base 2), 0 = equal, 1 = disjoint.

Frames are polars, with the event log's columns (recstack/event_log_format.py).
"""

import numpy as np
import polars as pl
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from recstack.data_profile import (
    DAY_S,
    DataProfile,
    Histogram,
    activity_histogram,
    popularity_histogram,
)
from recstack.schema import ARM, CONTEXT, ITEM_ID, ITEM_IDX, TS, USER_ID

PSI_FLOOR = 1e-4
SCORE = "score"  # the context key a client logs the served score under
UNASSIGNED = "unassigned"  # events without an arm (as the experiment report names them)
SCORE_BINS = 10  # score deciles of the window before


def psi(expected: list[float] | np.ndarray, actual: list[float] | np.ndarray) -> float:
    p = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
    q = np.maximum(np.asarray(actual, dtype=np.float64), PSI_FLOOR)
    return float(np.sum(rel_entr(q, p) + rel_entr(p, q)))  # = sum (q - p) ln(q / p)


def js_distance(expected: list[float] | np.ndarray, actual: list[float] | np.ndarray) -> float:
    return float(jensenshannon(expected, actual, base=2))


def compare(training: Histogram | None, window: Histogram) -> dict:
    """Both histograms and their PSI and JS distance (None when the window counted nothing,
    or the training data has no such histogram: ordinal times have no days)."""
    if training is None:
        return {
            "edges": window.edges,
            "training": None,
            "window": window.share,
            "window_total": window.total,
            "psi": None,
            "js": None,
            "note": "the training data's times are sequence positions: no events per day",
        }
    empty = window.total == 0
    return {
        "edges": training.edges,
        "training": training.share,
        "window": window.share,
        "window_total": window.total,
        "psi": None if empty else psi(training.share, window.share),
        "js": None if empty else js_distance(training.share, window.share),
    }


def with_item_idx(events: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """`events` with the artifact's item_idx of each item_id (null: not in its catalogue).
    `items`: item_id (string), item_idx."""
    return events.join(items, on=ITEM_ID, how="left")


def input_drift(
    interactions: pl.DataFrame,
    popularity: np.ndarray,
    profile: DataProfile,
    end: int,
    top_n: int,
) -> dict:
    """Item popularity and user activity against the training profile, and the items that
    have no embedding.

    interactions: the window's view/click/purchase/rating events with item_idx (from
    `with_item_idx`); popularity: the artifact's events per item_idx; end: the window's end
    (ts, s): user activity counts events per user per 24 h going back from it.
    """
    known = interactions.filter(pl.col(ITEM_IDX).is_not_null())
    per_item = np.bincount(known[ITEM_IDX].to_numpy(), minlength=popularity.shape[0])
    window_popularity = popularity_histogram(popularity, per_item.astype(np.float64))
    days = interactions.group_by(USER_ID, (end - pl.col(TS)) // DAY_S).len()["len"].to_numpy()
    unknown = interactions.filter(pl.col(ITEM_IDX).is_null())
    top = (
        unknown.group_by(ITEM_ID)
        .len("events")
        .sort(["events", ITEM_ID], descending=[True, False])
        .head(top_n)
    )
    events = interactions.height
    return {
        "item_popularity": compare(profile.item_popularity, window_popularity),
        "user_activity": compare(profile.user_activity, activity_histogram(days)),
        "unknown_items": {
            "events": unknown.height,
            "share": unknown.height / events if events else None,
            "distinct": unknown[ITEM_ID].n_unique(),
            "top": top.to_dicts(),
        },
    }


def unknown_users(users: pl.Series, known: pl.Series | None, why_unknown: str) -> dict:
    """The share of the window's distinct users that the training data does not hold."""
    if known is None:
        return {"share": None, "note": why_unknown}
    distinct = users.unique()
    new = int((~distinct.is_in(known.implode())).sum())
    return {"users": distinct.len(), "unknown": new, "share": new / max(distinct.len(), 1)}


def output_drift(impressions: pl.DataFrame, popularity: np.ndarray) -> dict:
    """Coverage and popularity lift of what was served.

    coverage = distinct catalogue items impressed / n_items; popularity lift = (mean training
    events of an impressed item - mean training events of a consumed item) / the latter, where
    "consumed" weighs each item by its training events (sum c^2 / sum c): > 0 means the service
    shows more popular items than users consumed in the training data (docs/architecture.md
    §5 defines the offline pop_lift the same way, with users instead of events).
    """
    known = impressions.filter(pl.col(ITEM_IDX).is_not_null())[ITEM_IDX].to_numpy()
    n_items = popularity.shape[0] - 1
    consumed = float(np.sum(popularity**2) / popularity.sum()) if popularity.sum() else 0.0
    served = float(popularity[known].mean()) if known.size else None
    return {
        "impressions": impressions.height,
        "unknown_items": impressions.height - int(known.size),
        "coverage": float(np.unique(known).size / n_items) if n_items else None,
        "popularity_lift": (served - consumed) / consumed if served is not None and consumed
        else None,
    }  # fmt: skip


def scores(impressions: pl.DataFrame) -> pl.DataFrame:
    """arm, score of the impressions whose context carries a finite numeric score."""
    return (
        impressions.select(
            pl.col(ARM).fill_null(UNASSIGNED),
            pl.col(CONTEXT).str.json_path_match(f"$.{SCORE}").cast(pl.Float64, strict=False),
        )
        .rename({CONTEXT: SCORE})
        .drop_nulls(SCORE)
        .filter(pl.col(SCORE).is_finite())
    )


def _quantiles(values: np.ndarray) -> dict[str, float]:
    """p05, p50, p95 of `values`."""
    points = np.quantile(values, [0.05, 0.5, 0.95]).tolist()
    return dict(zip(("p05", "p50", "p95"), points, strict=True))


def score_drift(window: pl.DataFrame, before: pl.DataFrame) -> dict:
    """Per arm: score quantiles in the window, and the PSI of its scores over the deciles of
    the window before (None without scores there). `window`, `before`: from `scores`."""
    out = {}
    for arm in sorted(window[ARM].unique().to_list()):
        now = window.filter(pl.col(ARM) == arm)[SCORE].to_numpy()
        ref = before.filter(pl.col(ARM) == arm)[SCORE].to_numpy()
        entry = {
            "n": int(now.size),
            "quantiles": _quantiles(now),
            "psi": None,
            "reference": int(ref.size),
        }
        if ref.size:
            inner = np.unique(np.quantile(ref, np.linspace(0, 1, SCORE_BINS + 1)[1:-1]))
            bins = [-np.inf, *inner, np.inf]
            p, _ = np.histogram(ref, bins=bins)
            q, _ = np.histogram(now, bins=bins)
            entry["psi"] = psi(p / p.sum(), q / q.sum())
            entry["reference_quantiles"] = _quantiles(ref)
        out[arm] = entry
    return out
