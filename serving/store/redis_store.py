"""`RedisStore`: the online store for several replicas or machines (Redis 6+).

Keys (all of a user's under one prefix, so erasure deletes them in one DEL):
    {prefix}user:{user_id}:history      list, oldest -> newest, RPUSH + LTRIM
    {prefix}user:{user_id}:consent      string, JSON object (a hash cannot hold {}: Redis
                                        deletes empty hashes, and "set to {}" must differ
                                        from "never set")
    {prefix}user:{user_id}:onboarding   list
    {prefix}meta                        hash of service-wide values
Multi-key writes run in MULTI/EXEC pipelines (one round trip, atomic). Socket timeouts are
short (0.5 s) with one retry, so an unreachable Redis raises StoreUnavailable within about a
second instead of hanging a request. Standalone Redis (or Sentinel through a URL); a Redis
Cluster would need hash tags so that one user's keys share a slot.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from recstack.errors import RecstackError, first_line
from recstack.serving.store.base import (
    DEFAULT_MAX_HISTORY,
    OnlineStore,
    StoreUnavailable,
    check_limit,
    consent_record,
)
from recstack.urls import redacted

USER_KEYS = ("history", "consent", "onboarding")  # every per-user key suffix
CHUNK_USERS = 500  # users per MULTI in batch writes (a huge MULTI would block Redis)


def _strings(values: Sequence[str], what: str) -> list[str]:
    values = list(values)
    for v in values:
        if not isinstance(v, str):
            raise RecstackError(f"{what} are strings, got {v!r} ({type(v).__name__})")
    return values


class RedisStore(OnlineStore):
    """Online store in Redis.

    Args:
        url: redis://[user:password@]host:port/db (or rediss://, unix://).
        max_history: items kept per user.
        prefix: prepended to every key (one Redis can host several services).
        timeout_s: socket connect and read timeout.
    """

    network = True

    def __init__(
        self,
        url: str,
        max_history: int = DEFAULT_MAX_HISTORY,
        prefix: str = "recstack:",
        timeout_s: float = 0.5,
    ):
        super().__init__(max_history)
        self.url, self.prefix = url, prefix
        try:
            self._redis = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1),  # one quick retry: a pooled socket may be stale
                health_check_interval=30,
            )
        except ValueError as exc:
            raise RecstackError(
                f"bad Redis URL {redacted(url)!r}: {exc}; use redis://host:port/db"
            ) from None

    # ------------------------------------------------------------------ keys, errors

    def key(self, user_id: str, what: str) -> str:
        if not isinstance(user_id, str):
            raise RecstackError(f"user ids are strings, got {user_id!r} ({type(user_id).__name__})")
        return f"{self.prefix}user:{user_id}:{what}"

    def user_keys(self, user_id: str) -> list[str]:
        return [self.key(user_id, what) for what in USER_KEYS]

    @contextmanager
    def _call(self) -> Iterator[None]:
        try:
            yield
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"Redis at {redacted(self.url)} is unavailable: {first_line(exc)}"
            ) from None

    # ------------------------------------------------------------------ histories

    def _write(self, histories: Mapping[str, Sequence[str]], replace: bool) -> None:
        batch = [(self.key(u, "history"), _strings(v, "item ids")) for u, v in histories.items()]
        with self._call():
            for start in range(0, len(batch), CHUNK_USERS):
                pipe = self._redis.pipeline(transaction=True)
                for key, items in batch[start : start + CHUNK_USERS]:
                    if replace:
                        pipe.delete(key)
                    if items:
                        pipe.rpush(key, *items[-self.max_history :])
                        pipe.ltrim(key, -self.max_history, -1)
                pipe.execute()

    def extend_histories(self, histories: Mapping[str, Sequence[str]]) -> None:
        self._write({u: v for u, v in histories.items() if v}, replace=False)

    def set_histories(self, histories: Mapping[str, Sequence[str]]) -> None:
        self._write(histories, replace=True)

    def histories(self, user_ids: Sequence[str], limit: int) -> list[list[str]]:
        if check_limit(limit) == 0 or not user_ids:
            return [[] for _ in user_ids]
        keys = [self.key(u, "history") for u in user_ids]
        with self._call():
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.lrange(key, -limit, -1)
            return pipe.execute()

    # ------------------------------------------------------------------ consent, onboarding, meta

    def set_consent(self, user_id: str, consent: Mapping[str, bool]) -> None:
        record = json.dumps(consent_record(consent), sort_keys=True)
        with self._call():
            self._redis.set(self.key(user_id, "consent"), record)

    def consent(self, user_id: str) -> dict[str, bool] | None:
        with self._call():
            raw = self._redis.get(self.key(user_id, "consent"))
        return None if raw is None else json.loads(raw)

    def set_onboarding(self, user_id: str, item_ids: Sequence[str]) -> None:
        key, items = self.key(user_id, "onboarding"), _strings(item_ids, "item ids")
        with self._call():
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(key)
            if items:
                pipe.rpush(key, *items)
            pipe.execute()

    def onboarding(self, user_id: str) -> list[str]:
        with self._call():
            return self._redis.lrange(self.key(user_id, "onboarding"), 0, -1)

    def set_meta(self, key: str, value: str) -> None:
        with self._call():
            self._redis.hset(f"{self.prefix}meta", key, str(value))

    def get_meta(self, key: str) -> str | None:
        with self._call():
            return self._redis.hget(f"{self.prefix}meta", key)

    # ------------------------------------------------------------------ the user as a whole

    def user_data(self, user_id: str) -> dict[str, Any]:
        with self._call():
            pipe = self._redis.pipeline(transaction=True)
            pipe.lrange(self.key(user_id, "history"), 0, -1)
            pipe.get(self.key(user_id, "consent"))
            pipe.lrange(self.key(user_id, "onboarding"), 0, -1)
            history, consent, onboarding = pipe.execute()
        return {
            "user_id": user_id,
            "history": history,
            "consent": None if consent is None else json.loads(consent),
            "onboarding": onboarding,
        }

    def erase(self, user_id: str) -> bool:
        keys = self.user_keys(user_id)
        with self._call():
            return self._redis.delete(*keys) > 0

    def known(self, user_id: str) -> bool:
        keys = self.user_keys(user_id)
        with self._call():
            return self._redis.exists(*keys) > 0

    def ping(self) -> None:
        with self._call():
            self._redis.ping()

    def close(self) -> None:
        self._redis.close()
