"""Requests per API key, limited with the `limits` library (a moving window: at most N calls
in any window of the period), answered with 429 and `Retry-After` beyond the limit.

    rate_limit: {per_key: 100/second}      # applications[0].args in the serve YAML

Counts live in each replica or worker process (`limits`' memory storage), so with R of them
behind the load balancer a key may reach up to R × the limit: set `per_key` to the share of
one replica. Keys are counted by their digest, never by the key itself.
"""

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from recstack.errors import RecstackError


def parse_limit(text: str) -> RateLimitItem:
    try:
        return parse(text)
    except ValueError:
        raise RecstackError(
            f"rate_limit.per_key {text!r} is not a rate: write it like 100/second or 6000/minute"
        ) from None


class RateLimited(Exception):
    def __init__(self, limit: str, retry_after_s: int) -> None:
        super().__init__(f"rate limit {limit} per API key reached: retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class KeyRateLimiter:
    def __init__(self, per_key: str) -> None:
        self.item = parse_limit(per_key)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def hit(self, key_digest: str) -> None:
        """Count one call of this key; RateLimited once it is over the limit."""
        if await self.limiter.hit(self.item, key_digest):
            return
        stats = await self.limiter.get_window_stats(self.item, key_digest)
        raise RateLimited(str(self.item), max(1, math.ceil(stats.reset_time - time.time())))
