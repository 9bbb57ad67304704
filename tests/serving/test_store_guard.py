"""StoreGuard on a real Redis that is frozen (SIGSTOP) and thawed: calls are bounded by the
timeout and the request deadline, the circuit opens after failures in a row and then fails
at once, and a background probe closes it soon after Redis answers again."""

import asyncio
import time

import pytest
from eventually import eventually_async
from service_config import started_redis

from recstack.serving import metrics
from recstack.serving.store.base import StoreUnavailable
from recstack.serving.store.guard import GuardSettings, StoreGuard
from recstack.serving.store.redis_store import RedisStore

pytestmark = pytest.mark.integration
SETTINGS = GuardSettings(timeout_s=0.05, deadline_s=0.1, open_after=3, probe_every_s=0.1)


@pytest.fixture
def redis_server(tmp_path):
    server = started_redis(tmp_path / "redis")
    yield server
    server.stop()


async def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    try:
        result = await call
    except StoreUnavailable as exc:
        result = exc
    return time.perf_counter() - started, result


def test_a_frozen_redis_opens_the_circuit_and_a_probe_closes_it(redis_server):
    async def scenario():
        store = RedisStore(redis_server.url, prefix="guard:")
        guard = StoreGuard(store, SETTINGS)
        try:
            await guard.call("append_history", "u1", ["a", "b"])
            assert await guard.call("history", "u1", 10) == ["a", "b"]

            redis_server.freeze()
            took = []
            for _ in range(SETTINGS.open_after):
                seconds, result = await timed(guard.call("history", "u1", 10))
                assert isinstance(result, StoreUnavailable), result
                took.append(seconds)
            assert max(took) < SETTINGS.timeout_s + 0.05, took  # each cut at its timeout
            assert guard.open and metrics.STORE_CIRCUIT_OPEN._value.get() == 1

            seconds, result = await timed(guard.call("consent", "u1"))
            assert isinstance(result, StoreUnavailable) and "background probe" in str(result)
            # fails at once: a fraction of one timeout, no wait on the dead store
            assert seconds < SETTINGS.timeout_s / 5, seconds
            await asyncio.sleep(1.0)
            assert guard.open  # still frozen: the probe keeps it open

            redis_server.thaw()

            async def closed() -> bool:
                return not guard.open

            await eventually_async(
                closed, timeout_s=2.0, interval_s=0.01, message="circuit still open after thaw"
            )
            assert metrics.STORE_CIRCUIT_OPEN._value.get() == 0
            assert await guard.call("history", "u1", 10) == ["a", "b"]
        finally:
            redis_server.thaw()
            await guard.aclose()
            store.close()

    asyncio.run(scenario())


def test_the_request_deadline_cuts_a_call_before_its_timeout(redis_server):
    async def scenario():
        store = RedisStore(redis_server.url, prefix="guard:")
        guard = StoreGuard(store, GuardSettings(timeout_s=1.0, open_after=100))
        try:
            redis_server.freeze()
            deadline = asyncio.get_running_loop().time() + 0.03
            seconds, result = await timed(guard.call("consent", "u1", deadline=deadline))
            assert isinstance(result, StoreUnavailable) and seconds < 0.08, (seconds, result)
            assert not guard.open  # one failure of 100
        finally:
            redis_server.thaw()
            await guard.aclose()
            store.close()

    asyncio.run(scenario())
