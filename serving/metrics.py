"""Prometheus metrics of the service (prometheus_client; scraped at GET /metrics).

One scrape reports the whole node: `recstack serve` gives the processes it starts (uvicorn
workers, Ray's replicas) a shared folder (`shared_across_processes`), where prometheus_client's
multiprocess mode keeps every process's values in memory-mapped files, and `exposition()` sums
them, whichever worker or ingress replica answers. Counters of a process that died stay in the
sums; its per-process gauges go. A process started without the folder (one uvicorn worker in
`recstack serve` itself, tests) reports its own registry. Labels carry no user ids or keys.
See docs/architecture.md §8.
"""

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

REGISTRY = CollectorRegistry()
SHARED_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it once, at its import
PREFIX = "recstack_"  # what /metrics reports of the folder (nothing another library put there)
_LIVE_GAUGE = re.compile(r"gauge_live\w*_(\d+)\.db")


@contextlib.contextmanager
def shared_across_processes(default: Path | None = None) -> Iterator[Path]:
    """While open, processes started from here (they inherit the environment) write their
    metrics into one folder, emptied first so a new service starts its counters at zero: the
    user's PROMETHEUS_MULTIPROC_DIR (kept), else `default` (kept), else a temp dir (removed
    at the end). This process's environment is left as it was."""
    users = os.environ.get(SHARED_ENV)
    folder = Path(users or default or tempfile.mkdtemp(prefix="recstack-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ[SHARED_ENV] = str(folder)
    try:
        yield folder
    finally:
        if users is None:
            os.environ.pop(SHARED_ENV, None)
            if default is None:
                shutil.rmtree(folder, ignore_errors=True)


def shared_folder() -> str | None:
    """The folder this process writes its metrics to, or None (it keeps them in memory)."""
    folder = os.environ.get(SHARED_ENV)
    return folder if folder and values.ValueClass is not values.MutexValue else None


def exposition() -> bytes:
    """The text format of GET /metrics: every process's sums, or this process's own."""
    folder = shared_folder()
    if folder is None:
        return generate_latest(REGISTRY)
    for name in os.listdir(folder):  # per-process gauges of processes that are gone
        match = _LIVE_GAUGE.fullmatch(name)
        if match and not psutil.pid_exists(int(match[1])):
            multiprocess.mark_process_dead(int(match[1]), folder)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)
    return generate_latest(_Ours(registry))


class _Ours:
    """A registry view with recstack's own metrics only."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        return (m for m in self.registry.collect() if m.name.startswith(PREFIX))


REQUESTS = Counter(
    "recstack_requests", "HTTP requests by route and status", ["route", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "recstack_request_seconds",
    "Server-side latency by route",
    ["route"],
    buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
RECOMMENDATIONS = Counter(
    "recstack_recommendations",
    "Recommend responses by arm and fallback",
    ["arm", "fallback"],
    registry=REGISTRY,
)
RECOMMEND_LATENCY = Histogram(
    "recstack_recommend_seconds",
    "Server-side latency of POST /v1/recommend by experiment arm (the A/B guardrail)",
    ["arm"],
    buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
SERVED_POPULARITY = Histogram(
    "recstack_served_popularity",
    "Mean popularity percentile of a served list's items (1 = the most popular item of the "
    "training log, 0 = the least), by arm",
    ["arm"],
    buckets=(0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0),
    registry=REGISTRY,
)
SERVED_COVERAGE = Gauge(
    "recstack_served_coverage",
    "Share of the catalogue in this replica's served lists of the last window (per replica)",
    registry=REGISTRY,
    multiprocess_mode="liveall",
)
UNKNOWN_ITEMS = Counter(
    "recstack_unknown_items",
    "History/exclude/onboarding ids not in the catalogue (ignored)",
    registry=REGISTRY,
)
EVENTS = Counter(
    "recstack_events",
    "Events accepted by type, and the arm and model version they were served under ('none')",
    ["type", "arm", "model_version"],
    registry=REGISTRY,
)
EVENTS_DROPPED = Counter(
    "recstack_events_dropped",
    "Events dropped because the user opted out of tracking",
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "recstack_store_errors",
    "Online store calls that failed (error, timeout) or were skipped (circuit_open)",
    ["kind"],
    registry=REGISTRY,
)
for _kind in ("error", "timeout", "circuit_open"):  # series at 0 from the start: rate() sees
    STORE_ERRORS.labels(_kind)  # the first failures after a restart
STORE_CIRCUIT_OPEN = Gauge(
    "recstack_store_circuit_open",
    "1 while store calls are skipped after failures in a row (serving/store/guard.py)",
    registry=REGISTRY,
    multiprocess_mode="livemax",  # 1 if any live process has its circuit open
)
STORE_SEEDED = Gauge(
    "recstack_store_seeded",
    "1 while the online store holds the seed_histories_from histories (or none is "
    "configured), 0 while they are missing or being re-seeded (serving/store/seed.py)",
    registry=REGISTRY,
    multiprocess_mode="livemin",  # 0 if any live process sees the seed missing
)
STORE_SEEDED.set(1)

# Where the time goes (serving/timing.py fills these): a request's stages, the event loop's
# lag, garbage-collector pauses, and the disk work of the store and the event log.
_FINE = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
STAGE = Histogram(
    "recstack_stage_seconds",
    "Time per request stage (store_read, retrieve, rank, popular, log_append, store_write, "
    "serialise)",
    ["stage"],
    buckets=_FINE,
    registry=REGISTRY,
)
LOOP_LAG = Histogram(
    "recstack_event_loop_lag_seconds",
    "How late the event loop ran a timer: time it spent blocked by other work",
    buckets=_FINE,
    registry=REGISTRY,
)
GC_PAUSE = Histogram(
    "recstack_gc_pause_seconds",
    "Garbage-collector pauses by generation",
    ["generation"],
    buckets=_FINE,
    registry=REGISTRY,
)
DISK = Histogram(
    "recstack_disk_seconds",
    "Disk work: event-log fsync and segment seal, online-store checkpoint",
    ["op"],
    buckets=_FINE,
    registry=REGISTRY,
)
