"""Prometheus metrics of an ingress replica (prometheus_client; scraped at GET /metrics).

Each ingress replica serves its own registry; Prometheus sums over replicas. Labels carry no
user ids or keys.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

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
UNKNOWN_ITEMS = Counter(
    "recstack_unknown_items",
    "History/exclude/onboarding ids not in the catalogue (ignored)",
    registry=REGISTRY,
)
EVENTS = Counter("recstack_events", "Events accepted by type", ["type"], registry=REGISTRY)
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
STORE_CIRCUIT_OPEN = Gauge(
    "recstack_store_circuit_open",
    "1 while store calls are skipped after failures in a row (serving/store/guard.py)",
    registry=REGISTRY,
)
STORE_SEEDED = Gauge(
    "recstack_store_seeded",
    "1 while the online store holds the seed_histories_from histories (or none is "
    "configured), 0 while they are missing or being re-seeded (serving/store/seed.py)",
    registry=REGISTRY,
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
