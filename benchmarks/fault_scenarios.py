"""The fault scenarios of benchmarks/faults.py, in the order they run and are tabled
(results_tables.py reads them here without importing the fault harness)."""

FAULTS = (
    "worker_kill",
    "replica_kill",
    "redis_refused",
    "redis_frozen",
    "redis_emptied",
    "corrupt_artifact",
    "server_kill",
)
