"""Requests per API key (serving/rate_limit.py): beyond the limit a key gets 429 with
Retry-After, and other keys are not affected; a limit that is not a rate is refused in one line."""

import asyncio

import pytest
import requests
from service_config import ADMIN, APP, start_serve, write_serve_config

from recstack.errors import RecstackError
from recstack.serving.config import read_serve_config
from recstack.serving.rate_limit import KeyRateLimiter, RateLimited

pytestmark = pytest.mark.integration


def test_a_key_over_its_limit_is_told_when_to_retry():
    limiter = KeyRateLimiter("2/minute")
    asyncio.run(limiter.hit("key-a"))
    asyncio.run(limiter.hit("key-a"))
    with pytest.raises(RateLimited, match="2 per 1 minute") as exc:
        asyncio.run(limiter.hit("key-a"))
    assert 1 <= exc.value.retry_after_s <= 60
    asyncio.run(limiter.hit("key-b"))  # another key has its own count


def test_a_limit_that_is_not_a_rate_is_refused_in_one_line(tmp_path, ml100k_artifacts):
    config = write_serve_config(
        tmp_path / "s.yaml",
        ml100k_artifacts,
        tmp_path / "state",
        1,
        extra_args={"rate_limit": {"per_key": "lots"}},
    )
    with pytest.raises(RecstackError, match="not a rate: write it like 100/second") as exc:
        read_serve_config(config)
    assert "\n" not in str(exc.value)


def test_uvicorn_answers_429_with_retry_after_to_that_key_only(tmp_path, ml100k_artifacts):
    server, base = start_serve(
        tmp_path,
        ml100k_artifacts,
        "--engine",
        "uvicorn",
        "--workers",
        "1",  # counts are per worker: one worker sees every call
        extra_args={"rate_limit": {"per_key": "3/minute"}},
    )
    try:
        body = {"user_id": "1", "k": 3}
        codes = [
            requests.post(f"{base}/v1/recommend", json=body, headers=APP, timeout=30)
            for _ in range(4)
        ]
        assert [r.status_code for r in codes] == [200, 200, 200, 429]
        assert int(codes[3].headers["Retry-After"]) >= 1 and "3 per 1 minute" in codes[3].text
        other = requests.post(f"{base}/v1/recommend", json=body, headers=ADMIN, timeout=30)
        assert other.status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
