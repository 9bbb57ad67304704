"""Serving fixtures: a real `redis-server` for the session (no persistence, loopback only),
and `benchmarks/` on the import path (the load generator and the Redis launcher)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from service_config import started_redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """URL of a throwaway redis-server on 127.0.0.1."""
    server = started_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()
