"""Event tables for the A/B report tests (hand-written rows, or users described by counts),
and a Prometheus exposition like the service's."""

import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from recstack.serving.experiments import Arm, Experiment

COLUMNS = {
    "user_id": pa.string(),
    "item_id": pa.string(),
    "type": pa.string(),
    "arm": pa.string(),
    "request_id": pa.string(),
    "value": pa.float64(),
    "received_at": pa.int64(),
}
T0 = 1_699_920_000_000  # ms since the epoch: 2023-11-14 00:00 UTC, the start of a day


def experiment(*weights: float, popularity: bool = True) -> Experiment:
    """Arms a0 (popularity unless told otherwise), a1, … with the given weights."""
    arms = [
        Arm(name=f"a{i}", kind="model", model=f"m{i}", weight=w)
        if i or not popularity
        else Arm(name="a0", kind="popularity", weight=w)
        for i, w in enumerate(weights)
    ]
    return Experiment(name="exp", salt="s", arms=arms)


def ev(user, kind, arm, request=None, item="1", value=None, at=T0) -> dict:
    return {
        "user_id": user,
        "item_id": item,
        "type": kind,
        "arm": arm,
        "request_id": request,
        "value": value,
        "received_at": at,
    }


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema(COLUMNS))


def users_log(arms: dict[str, dict[str, np.ndarray]], at: np.ndarray | None = None) -> pa.Table:
    """A log where user j of an arm saw one list of impressions[j] items (item ids 0..n-1,
    request id "<arm>-<j>"), clicked its first clicks[j] items and bought its first
    purchases[j] items, the first one for value[j] (optional arrays). All rows of user j
    arrive at at[j] (ms; default T0), outcomes 1 s later."""
    parts = []
    for arm, users in arms.items():
        n = np.asarray(users["impressions"])
        user = np.array([f"{arm}-u{j}" for j in range(len(n))], dtype=object)
        when = np.full(len(n), T0) if at is None else np.asarray(at)
        for kind, counts in (
            ("impression", n),
            ("click", users.get("clicks", np.zeros_like(n))),
            ("purchase", users.get("purchases", np.zeros_like(n))),
        ):
            counts = np.asarray(counts)
            owner = np.repeat(np.arange(len(n)), counts)
            item = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            value = np.full(len(owner), np.nan)
            if kind == "purchase" and "value" in users:
                first = item == 0
                value[first] = np.asarray(users["value"])[owner[first]]
            parts.append(
                pa.table(
                    {
                        "user_id": pa.array(user[owner], pa.string()),
                        "item_id": pa.array(item.astype(str), pa.string()),
                        "type": pa.array(np.full(len(owner), kind), pa.string()),
                        "arm": pa.array(np.full(len(owner), arm), pa.string()),
                        "request_id": pa.array((user[owner] + "-r").astype(str), pa.string()),
                        "value": pa.array(value, pa.float64(), from_pandas=True),
                        "received_at": pa.array(when[owner] + (kind != "impression") * 1000),
                    },
                    schema=pa.schema(COLUMNS),
                )
            )
    return pa.concat_tables(parts)


def exposition() -> bytes:
    """Two replicas' recommend latency and recommendations, as the service exposes them."""
    registry = CollectorRegistry()
    buckets = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)
    latency = Histogram(
        "recstack_recommend_seconds", "", ["arm", "replica"], buckets=buckets, registry=registry
    )
    served = Counter("recstack_recommendations", "", ["arm", "fallback"], registry=registry)
    for replica in ("r1", "r2"):
        for _ in range(490):
            latency.labels("a0", replica).observe(0.004)
        for _ in range(10):
            latency.labels("a0", replica).observe(0.02)
    served.labels("a0", "none").inc(900)
    served.labels("a0", "cold_start").inc(80)
    served.labels("a0", "store_unavailable").inc(20)
    served.labels("a1", "none").inc(5)
    return generate_latest(registry)
