"""`StoreGuard`: the request path's bounded view of the online store.

A hung store (Redis frozen, a network partition) must cost a request a few milliseconds, not
seconds, and must not hold threads or pile up calls. So, for every store call a request makes:

- the call runs on the store's asyncio client (`OnlineStore.call_async`) and is cancelled
  after `timeout_s`, or earlier at the request's own deadline (`deadline_s` over all of its
  store calls);
- after `open_after` failures in a row the circuit opens: calls fail at once with
  StoreUnavailable (the service answers with its flagged fallback), and one background task
  pings the store every `probe_every_s`; the first answer closes the circuit.

Circuit-breaker libraries (pybreaker, purgatory) let a user's request be the half-open trial,
which would make one request per interval wait for a dead store; here no request does.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import BaseModel, ConfigDict, Field

from recstack.serving import metrics
from recstack.serving.store.base import OnlineStore, StoreUnavailable

log = logging.getLogger(__name__)


class GuardSettings(BaseModel):
    """The serve config's `store_guard` section. The defaults suit a store on the same LAN,
    which answers in well under a millisecond: a call still waiting after 25 ms is stuck."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(0.025, gt=0, le=10)  # one store call
    deadline_s: float = Field(0.05, gt=0, le=30)  # all store calls of one request
    open_after: int = Field(3, ge=1, le=1000)  # failures in a row that open the circuit
    probe_every_s: float = Field(0.25, gt=0, le=60)  # pings while open


class StoreGuard:
    def __init__(self, store: OnlineStore, settings: GuardSettings | None = None) -> None:
        self.store, self.settings = store, settings or GuardSettings()
        self.failures, self.last_error = 0, ""
        self._probe: asyncio.Task | None = None

    @property
    def open(self) -> bool:
        return self._probe is not None and not self._probe.done()

    def deadline(self) -> float:
        """The loop time by which a request starting now must be done with the store."""
        return asyncio.get_running_loop().time() + self.settings.deadline_s

    async def call(self, method: str, *args, deadline: float | None = None):
        """`store.<method>(*args)`, bounded; StoreUnavailable when it fails, times out, or
        the circuit is open."""
        if self.open:
            metrics.STORE_ERRORS.labels("circuit_open").inc()
            raise StoreUnavailable(
                f"{self.store.name} skipped after {self.settings.open_after} failed calls in a "
                f"row (last: {self.last_error}); a background probe retries it"
            )
        loop = asyncio.get_running_loop()
        until = loop.time() + self.settings.timeout_s
        if deadline is not None:
            until = min(until, deadline)
        try:
            async with asyncio.timeout_at(until):
                result = await self.store.call_async(method, *args)
        except TimeoutError:
            self._failed(
                "timeout",
                f"{self.store.name} did not answer {method} within "
                f"{1000 * self.settings.timeout_s:.0f} ms (or the request's store deadline)",
            )
            raise StoreUnavailable(self.last_error) from None
        except StoreUnavailable as exc:
            self._failed("error", str(exc))
            raise
        self.failures = 0
        return result

    def _failed(self, kind: str, error: str) -> None:
        metrics.STORE_ERRORS.labels(kind).inc()
        self.failures, self.last_error = self.failures + 1, error
        if self.failures >= self.settings.open_after and not self.open:
            log.warning("online store: %d failed calls in a row, circuit open", self.failures)
            metrics.STORE_CIRCUIT_OPEN.set(1)
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while True:
            await asyncio.sleep(self.settings.probe_every_s)
            try:
                async with asyncio.timeout(max(self.settings.timeout_s, 0.2)):
                    await self.store.call_async("ping")
            except (TimeoutError, StoreUnavailable):
                continue
            self.failures = 0
            metrics.STORE_CIRCUIT_OPEN.set(0)
            log.warning("online store answers again, circuit closed")
            return

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.store.aclose()
