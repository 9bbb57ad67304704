"""The A/B report: outcomes attributed to the list that was served, user-level metrics per
arm with confidence intervals, every arm against the control, a sample-ratio-mismatch check
and guardrails (docs/architecture.md §8, "Experiments"; the log's columns: §9).

Attribution. A recommend response carries a `request_id`; the client logs each item it showed
as an `impression` event with that request_id, and a later `click` or `purchase` of a shown
item with the same request_id. A click or purchase is *attributed* when an impression with the
same request_id, user_id and item_id exists; it then counts for the arm of that impression.
Every other click or purchase is *unattributed* and reported apart, outside the metrics. An
impression is counted once per (request_id, user_id, item_id) (a retried POST does not count
twice) and a click once per impression, so CTR ≤ 1. Impressions without a request_id count as
impressions but can receive no clicks.

Metrics per arm, over its *users* (those with at least one impression in the arm):
    ctr             attributed clicks / impressions (a ratio of per-user sums; delta method)
    conversion      share of users with at least one attributed purchase (Wilson interval;
                    the difference vs control uses the users' standard error)
    value_per_user  Σ `value` of attributed purchases / users (purchases without a value add 0)
Intervals and p-values are user-level (serving/experiment_stats.py). The control is the
experiment's (its first popularity arm, else its first arm) unless named.
"""

import math

import numpy as np
import polars as pl
import pyarrow as pa

from recstack.errors import RecstackError
from recstack.schema import ARM, EVENT_TYPE, ITEM_ID, RECEIVED_AT, REQUEST_ID, USER_ID, VALUE
from recstack.serving.experiment_guardrails import guardrails as guardrails_block
from recstack.serving.experiment_stats import (
    CONFIDENCE,
    Estimate,
    difference,
    mean_estimate,
    ratio_estimate,
    sample_ratio_check,
    wilson_interval,
)
from recstack.serving.experiments import Experiment

REQUIRED_COLUMNS = (USER_ID, EVENT_TYPE, ARM)
_OPTIONAL = {ITEM_ID: pl.String, REQUEST_ID: pl.String, VALUE: pl.Float64, RECEIVED_AT: pl.Int64}
METRICS = ("ctr", "conversion", "value_per_user")
IMPRESSION, CLICK, PURCHASE = "impression", "click", "purchase"
NO_IMPRESSIONS = "no impressions"
HOUR_MS, DAY_MS = 3_600_000, 86_400_000
MAX_POINTS = 60  # points of the over-time series at most (buckets are merged beyond)
_COLUMNS = (*REQUIRED_COLUMNS, *_OPTIONAL)
_KEY = [REQUEST_ID, USER_ID, ITEM_ID]
_SERVED_ARM = "_served_arm"
_T, _N, _C, _P, _V = "_t", "_impressions", "_clicks", "_purchases", "_value"


def _frame(events: pa.Table) -> pl.DataFrame:
    """The columns the report reads, typed; optional ones missing from `events` are null."""
    missing = [c for c in REQUIRED_COLUMNS if c not in events.column_names]
    if missing:
        raise RecstackError(
            f"event table lacks columns {missing} (has {events.column_names}); "
            "pass an event log written by recstack serving"
        )
    frame = pl.DataFrame(events.select([c for c in events.column_names if c in _COLUMNS]))
    return frame.select(
        *(pl.col(c).cast(pl.String) for c in REQUIRED_COLUMNS),
        *(
            pl.col(c).cast(dtype) if c in frame.columns else pl.lit(None, dtype).alias(c)
            for c, dtype in _OPTIONAL.items()
        ),
    )


def attribute(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(contributions, unattributed outcomes) of the assigned events.

    contributions: one row per counted impression, attributed click and attributed purchase:
    arm, user_id, _t (received_at, ms), and the row's _impressions, _clicks, _purchases and
    _value (0 or 1, and the purchase's value). unattributed: the click and purchase rows of an
    arm (their own) that match no impression; events without an arm are neither.
    """
    shown = frame.filter(pl.col(EVENT_TYPE) == IMPRESSION, pl.col(ARM).is_not_null())
    keyed = shown.filter(pl.col(REQUEST_ID).is_not_null()).unique(
        _KEY, keep="first", maintain_order=True
    )
    impressions = pl.concat([keyed, shown.filter(pl.col(REQUEST_ID).is_null())])
    served = keyed.select(*_KEY, pl.col(ARM).alias(_SERVED_ARM))
    outcomes = frame.filter(pl.col(EVENT_TYPE).is_in([CLICK, PURCHASE])).join(
        served, on=_KEY, how="left"
    )
    attributed = outcomes.filter(pl.col(_SERVED_ARM).is_not_null())
    clicks = attributed.filter(pl.col(EVENT_TYPE) == CLICK).unique(
        _KEY, keep="first", maintain_order=True
    )
    purchases = attributed.filter(pl.col(EVENT_TYPE) == PURCHASE)

    def rows(part: pl.DataFrame, arm: str, n: int, c: int, p: int, value: pl.Expr) -> pl.DataFrame:
        return part.select(
            pl.col(arm).alias(ARM),
            USER_ID,
            pl.col(RECEIVED_AT).alias(_T),
            pl.lit(n, pl.Int64).alias(_N),
            pl.lit(c, pl.Int64).alias(_C),
            pl.lit(p, pl.Int64).alias(_P),
            value.cast(pl.Float64).alias(_V),
        )

    contributions = pl.concat(
        [
            rows(impressions, ARM, 1, 0, 0, pl.lit(0.0)),
            rows(clicks, _SERVED_ARM, 0, 1, 0, pl.lit(0.0)),
            rows(purchases, _SERVED_ARM, 0, 0, 1, pl.col(VALUE).fill_null(0.0)),
        ]
    )
    return contributions, outcomes.filter(pl.col(_SERVED_ARM).is_null(), pl.col(ARM).is_not_null())


def per_user(contributions: pl.DataFrame, until_ms: int | None = None) -> dict[str, dict]:
    """{arm: {column: numpy array over its users}} of users with an impression (before
    `until_ms` when given)."""
    part = contributions if until_ms is None else contributions.filter(pl.col(_T) < until_ms)
    users = (
        part.group_by(ARM, USER_ID)
        .agg(pl.col(_N).sum(), pl.col(_C).sum(), pl.col(_P).sum(), pl.col(_V).sum())
        .filter(pl.col(_N) > 0)
        .sort(ARM, USER_ID)
    )
    return {
        arm: {c: group[c].to_numpy() for c in (_N, _C, _P, _V)}
        for (arm,), group in users.group_by(ARM, maintain_order=True)
    }


def estimates(users: dict | None) -> dict[str, Estimate]:
    """The user-level estimate of every metric from one arm's per-user arrays."""
    if users is None:
        return {m: Estimate(None, None, 0) for m in METRICS}
    return {
        "ctr": ratio_estimate(users[_C], users[_N]),
        "conversion": mean_estimate(users[_P] > 0),
        "value_per_user": mean_estimate(users[_V]),
    }


def _arm_metrics(users: dict | None) -> dict:
    """Counts, metrics and their intervals of one arm (None metrics without impressions)."""
    est = estimates(users)
    sums = {c: 0 if users is None else users[c].sum() for c in (_N, _C, _P, _V)}
    n = 0 if users is None else len(users[_N])
    converted = 0 if users is None else int((users[_P] > 0).sum())
    return {
        "users": n,
        "impressions": int(sums[_N]),
        "clicks": int(sums[_C]),
        "purchases": int(sums[_P]),
        "converted_users": converted,
        "value": float(sums[_V]),
        "ctr": est["ctr"].value,
        "ctr_ci": est["ctr"].interval(0.0, 1.0),
        "conversion": est["conversion"].value,
        "conversion_ci": wilson_interval(converted, n),
        "value_per_user": est["value_per_user"].value,
        "value_per_user_ci": est["value_per_user"].interval(0.0),
    }


def _count(frame: pl.DataFrame, kind: str) -> int:
    return int((frame[EVENT_TYPE] == kind).sum())


def experiment_report(
    events: pa.Table,
    experiment: Experiment | None = None,
    control: str | None = None,
    guardrails: str | bytes | None = None,
    over_time: bool = False,
    guardrails_source: str | None = None,
) -> dict:
    """The A/B report as a JSON-ready dict.

    Args:
        events: the event log (read_events); needs user_id, type and arm; item_id,
            request_id, value and received_at are read when present.
        experiment: the declared arms (listed first, with zeros when they have no events),
            their weights (the SRM check) and the control. Arms only in the log follow
            (`declared: False`). Events without an arm are "unassigned", outside the arms.
        control: the arm every other is compared with; default the experiment's control,
            else (no experiment) the first arm by name.
        guardrails: the service's Prometheus exposition text (p99 latency and fallback share
            per arm), or None (guardrails reported as unavailable).
        over_time: also give the metrics cumulated by hour or day (`over_time`: the PNG).
        guardrails_source: where the exposition came from, for the report.
    """
    frame = _frame(events)
    declared = {arm.name: arm for arm in experiment.arms} if experiment else {}
    logged = sorted(set(frame[ARM].drop_nulls().unique().to_list()) - set(declared))
    names = [*declared, *logged]
    if control is None and names:
        control = experiment.control.name if experiment else names[0]
    if control is not None and control not in names:
        raise RecstackError(
            f"control arm {control!r} is neither declared nor in the log; arms: {names}"
        )
    contributions, unattributed = attribute(frame)
    users = per_user(contributions)
    block = guardrails_block(guardrails, guardrails_source)
    arms: dict[str, dict] = {}
    for name in names:
        rows = frame.filter(pl.col(ARM) == name)
        loose = unattributed.filter(pl.col(ARM) == name)
        arm = declared.get(name)
        arms[name] = {
            "kind": arm.kind if arm else None,
            "model": arm.model if arm else None,
            "weight": arm.weight if arm else None,
            "declared": arm is not None,
            "events": rows.height,
            **_arm_metrics(users.get(name)),
            "impressions_without_request_id": int(
                ((rows[EVENT_TYPE] == IMPRESSION) & rows[REQUEST_ID].is_null()).sum()
            ),
            "unattributed_clicks": _count(loose, CLICK),
            "unattributed_purchases": _count(loose, PURCHASE),
            "guardrails": block["arms"].get(name),
            "note": None if name in users else NO_IMPRESSIONS,
        }
    notes = _compare(arms, users, control)
    if frame.height == 0:
        notes.insert(0, "the event log holds no events")
    without_id = sum(a["impressions_without_request_id"] for a in arms.values())
    if without_id:
        notes.append(
            f"{without_id} impressions carry no request_id: clicks cannot be tied to them; "
            "log the recommend response's request_id with every impression"
        )
    unassigned = frame.filter(pl.col(ARM).is_null())
    report = {
        "experiment": experiment.name if experiment else None,
        "confidence": CONFIDENCE,
        "control": control,
        "events": frame.height,
        "arms": arms,
        "unassigned": {
            "impressions": _count(unassigned, IMPRESSION),
            "clicks": _count(unassigned, CLICK),
            "users": unassigned[USER_ID].n_unique(),
            "events": unassigned.height,
        },
        "attribution": {
            "clicks": sum(a["clicks"] for a in arms.values()),
            "purchases": sum(a["purchases"] for a in arms.values()),
            "unattributed_clicks": _count(unattributed, CLICK),
            "unattributed_purchases": _count(unattributed, PURCHASE),
            "impressions_without_request_id": without_id,
        },
        "srm": sample_ratio_check(
            {n: arms[n]["users"] for n in declared}, {n: a.weight for n, a in declared.items()}
        )
        if declared
        else None,
        "guardrails": {k: v for k, v in block.items() if k != "arms"},
        "notes": notes,
    }
    if report["srm"] and report["srm"]["flagged"]:
        notes.insert(0, f"sample-ratio mismatch (p = {report['srm']['p_value']:.2g})")
    if over_time:
        report["over_time"] = over_time_series(contributions, names)
    return report


def _compare(arms: dict[str, dict], users: dict[str, dict], control: str | None) -> list[str]:
    """Fill every arm's `<metric>_vs_control` (`vs_control` is CTR's); returns notes."""
    base = estimates(users.get(control)) if control is not None else None
    for name, arm in arms.items():
        own = estimates(users.get(name))
        for metric in METRICS:
            key = "vs_control" if metric == "ctr" else f"{metric}_vs_control"
            compared = name != control and base is not None
            arm[key] = difference(own[metric], base[metric]) if compared else None
    if control is not None and control not in users and len(arms) > 1:
        return [f"the control arm {control!r} has no impressions: nothing to compare with"]
    return []


def over_time_series(contributions: pl.DataFrame, names: list[str]) -> dict:
    """Every arm's metrics and intervals cumulated up to the end of each hour (a log spanning
    up to two days) or day, at most MAX_POINTS points: {"bucket", "points": [{"until_ms",
    "arms": {arm: {metric: value, f"{metric}_ci": [lo, hi]}}}], "note"}."""
    times = contributions.filter(pl.col(_N) > 0)[_T].drop_nulls()
    if times.is_empty():
        return {"bucket": None, "points": [], "note": "no impressions with a received_at"}
    first, last = int(times.min()), int(times.max())
    width = HOUR_MS if last - first <= 2 * DAY_MS else DAY_MS
    start = first // width * width
    buckets = (last - start) // width + 1
    step = math.ceil(buckets / MAX_POINTS)
    ends = [start + k * width for k in range(step, buckets + step, step)]  # last one > last
    points = []
    for end in ends:
        users = per_user(contributions, end)
        arms = {}
        for name in names:
            metrics = _arm_metrics(users.get(name))
            arms[name] = {key: metrics[key] for m in METRICS for key in (m, f"{m}_ci")} | {
                "users": metrics["users"]
            }
        points.append({"until_ms": end, "arms": arms})
    return {"bucket": "hour" if width == HOUR_MS else "day", "points": points, "note": None}


def user_arrays(events: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    """{arm: {"impressions", "clicks", "purchases", "value"}: one entry per exposed user},
    the arrays the report's statistics run on (for checks and notebooks)."""
    contributions, _ = attribute(_frame(events))
    names = {_N: "impressions", _C: "clicks", _P: "purchases", _V: "value"}
    return {
        arm: {names[c]: a for c, a in cols.items()} for arm, cols in per_user(contributions).items()
    }
