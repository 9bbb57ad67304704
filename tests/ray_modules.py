"""The test modules that start a local Ray (tests/conftest.py runs them on one xdist worker,
in turn; tests/test_test_bed.py keeps the list complete)."""

# Modules whose tests start a local Ray. Two Rays at once would both bind HAProxy's fixed
# stats and metrics ports and the same direct-ingress port range, so under pytest-xdist these
# modules run on one worker, one after another, while the other workers take the rest.
RAY_MODULES = {
    "tests/benchmarks/test_faults.py",
    "tests/serving/test_colocated.py",
    "tests/serving/test_lifecycle.py",
    "tests/serving/test_multinode_serve.py",
    "tests/serving/test_ray_runtime.py",
    "tests/serving/test_schemathesis.py",
    "tests/serving/test_service_http.py",
    "tests/serving/test_service_redis.py",
    "tests/serving/test_store_outage_load.py",
}

# What runs as that one unit: the Ray modules, and the retrain loop's tests, which train models
# beside a running service; beside a Ray module they starve its replicas of the cores (its
# online-store calls time out into fallbacks).
SERIAL_MODULES = RAY_MODULES | {"tests/loop/test_retrain.py"}
