"""`RedisStore`: the online store for several replicas or machines (Redis 6+).

Keys (all of a user's under one prefix, so erasure deletes them in one DEL):
    {prefix}user:{user_id}:history      list, oldest -> newest, RPUSH + LTRIM
    {prefix}user:{user_id}:consent      string, JSON object (a hash cannot hold {}: Redis
                                        deletes empty hashes, and "set to {}" must differ
                                        from "never set")
    {prefix}user:{user_id}:onboarding   list
    {prefix}meta                        hash of service-wide values

Every operation is a `Plan`: the commands it queues on a pipeline (one round trip; MULTI/EXEC
where it writes several keys) and how to read the replies. The same plan runs on the blocking
client (CLI, seeding, model watch threads) and on the asyncio client (`call_async`, the
service's request path), so the two cannot drift apart. Blocking calls time out after
`timeout_s` (0.5 s) with one retry; on the request path the service's `StoreGuard` bounds each
call far tighter. Standalone Redis (or Sentinel through a URL); a Redis Cluster would need
hash tags so that one user's keys share a slot.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
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


def _replies(replies: list) -> Any:
    return replies


def _first(replies: list) -> Any:
    return replies[0]


@dataclass(frozen=True)
class Plan:
    """One round trip: `queue(pipe)` adds the commands, `result(replies)` reads the answer."""

    queue: Callable[[Any], None]
    result: Callable[[list], Any] = _first
    transaction: bool = False  # MULTI/EXEC: all commands or none


class RedisStore(OnlineStore):
    """Online store in Redis.

    Args:
        url: redis://[user:password@]host:port/db (or rediss://, unix://).
        max_history: items kept per user.
        prefix: prepended to every key (one Redis can host several services).
        timeout_s: socket connect and read timeout.
    """

    def __init__(
        self,
        url: str,
        max_history: int = DEFAULT_MAX_HISTORY,
        prefix: str = "recstack:",
        timeout_s: float = 0.5,
    ):
        super().__init__(max_history)
        self.url, self.prefix, self.timeout_s = url, prefix, timeout_s
        self.name = f"Redis at {redacted(url)}"
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
        self._async: redis.asyncio.Redis | None = None  # made in, and bound to, one event loop
        self._async_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ keys, errors, running

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
            raise StoreUnavailable(f"{self.name} is unavailable: {first_line(exc)}") from None

    def _run(self, *plans: Plan) -> Any:
        """Run plans one round trip each on the blocking client; the last plan's result."""
        result = None
        with self._call():
            for plan in plans:
                pipe = self._redis.pipeline(transaction=plan.transaction)
                plan.queue(pipe)
                result = plan.result(pipe.execute())
        return result

    def _async_client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            self._async = redis.asyncio.Redis.from_url(
                self.url,
                decode_responses=True,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=AsyncRetry(NoBackoff(), 1),
            )
            self._async_loop = loop
        return self._async

    async def call_async(self, method: str, *args) -> Any:
        plans = getattr(self, f"_{method}")(*args)
        client, result = self._async_client(), None
        with self._call():
            for plan in plans:
                pipe = client.pipeline(transaction=plan.transaction)
                plan.queue(pipe)
                result = plan.result(await pipe.execute())
        return result

    # ------------------------------------------------------------------ histories

    def _write(self, histories: Mapping[str, Sequence[str]], replace: bool) -> list[Plan]:
        batch = [(self.key(u, "history"), _strings(v, "item ids")) for u, v in histories.items()]

        def chunk_plan(chunk: list[tuple[str, list[str]]]) -> Plan:
            def queue(pipe) -> None:
                for key, items in chunk:
                    if replace:
                        pipe.delete(key)
                    if items:
                        pipe.rpush(key, *items[-self.max_history :])
                        pipe.ltrim(key, -self.max_history, -1)

            return Plan(queue, _replies, transaction=True)

        return [chunk_plan(batch[s : s + CHUNK_USERS]) for s in range(0, len(batch), CHUNK_USERS)]

    def _extend_histories(self, histories: Mapping[str, Sequence[str]]) -> list[Plan]:
        return self._write({u: v for u, v in histories.items() if v}, replace=False)

    def _append_history(self, user_id: str, item_ids: Sequence[str]) -> list[Plan]:
        return self._extend_histories({user_id: item_ids})

    def extend_histories(self, histories: Mapping[str, Sequence[str]]) -> None:
        self._run(*self._extend_histories(histories))

    def _set_histories(self, histories: Mapping[str, Sequence[str]]) -> list[Plan]:
        return self._write(histories, replace=True)

    def set_histories(self, histories: Mapping[str, Sequence[str]]) -> None:
        self._run(*self._set_histories(histories))

    def _histories(self, user_ids: Sequence[str], limit: int) -> list[Plan]:
        if check_limit(limit) == 0 or not user_ids:
            return [Plan(lambda pipe: None, lambda _: [[] for _ in user_ids])]
        keys = [self.key(u, "history") for u in user_ids]

        def queue(pipe) -> None:
            for key in keys:
                pipe.lrange(key, -limit, -1)

        return [Plan(queue, _replies)]

    def histories(self, user_ids: Sequence[str], limit: int) -> list[list[str]]:
        return self._run(*self._histories(user_ids, limit))

    def _history(self, user_id: str, limit: int) -> list[Plan]:
        (plan,) = self._histories([user_id], limit)
        return [Plan(plan.queue, lambda replies: plan.result(replies)[0])]

    # ------------------------------------------------------------------ consent, onboarding, meta

    def _set_consent(self, user_id: str, consent: Mapping[str, bool]) -> list[Plan]:
        key, record = (
            self.key(user_id, "consent"),
            json.dumps(consent_record(consent), sort_keys=True),
        )
        return [Plan(lambda pipe: pipe.set(key, record))]

    def set_consent(self, user_id: str, consent: Mapping[str, bool]) -> None:
        self._run(*self._set_consent(user_id, consent))

    def _consent(self, user_id: str) -> list[Plan]:
        key = self.key(user_id, "consent")
        return [
            Plan(lambda pipe: pipe.get(key), lambda r: None if r[0] is None else json.loads(r[0]))
        ]

    def consent(self, user_id: str) -> dict[str, bool] | None:
        return self._run(*self._consent(user_id))

    def _set_onboarding(self, user_id: str, item_ids: Sequence[str]) -> list[Plan]:
        key, items = self.key(user_id, "onboarding"), _strings(item_ids, "item ids")

        def queue(pipe) -> None:
            pipe.delete(key)
            if items:
                pipe.rpush(key, *items)

        return [Plan(queue, _replies, transaction=True)]

    def set_onboarding(self, user_id: str, item_ids: Sequence[str]) -> None:
        self._run(*self._set_onboarding(user_id, item_ids))

    def _onboarding(self, user_id: str) -> list[Plan]:
        key = self.key(user_id, "onboarding")
        return [Plan(lambda pipe: pipe.lrange(key, 0, -1))]

    def onboarding(self, user_id: str) -> list[str]:
        return self._run(*self._onboarding(user_id))

    def _set_meta(self, key: str, value: str) -> list[Plan]:
        return [Plan(lambda pipe: pipe.hset(f"{self.prefix}meta", key, str(value)))]

    def set_meta(self, key: str, value: str) -> None:
        self._run(*self._set_meta(key, value))

    def _get_meta(self, key: str) -> list[Plan]:
        return [Plan(lambda pipe: pipe.hget(f"{self.prefix}meta", key))]

    def get_meta(self, key: str) -> str | None:
        return self._run(*self._get_meta(key))

    # ------------------------------------------------------------------ the user as a whole

    def _user_data(self, user_id: str) -> list[Plan]:
        keys = [self.key(user_id, what) for what in USER_KEYS]

        def queue(pipe) -> None:
            pipe.lrange(keys[0], 0, -1)
            pipe.get(keys[1])
            pipe.lrange(keys[2], 0, -1)

        def result(replies: list) -> dict[str, Any]:
            history, consent, onboarding = replies
            return {
                "user_id": user_id,
                "history": history,
                "consent": None if consent is None else json.loads(consent),
                "onboarding": onboarding,
            }

        return [Plan(queue, result, transaction=True)]

    def user_data(self, user_id: str) -> dict[str, Any]:
        return self._run(*self._user_data(user_id))

    def _erase(self, user_id: str) -> list[Plan]:
        keys = self.user_keys(user_id)
        return [Plan(lambda pipe: pipe.delete(*keys), lambda r: r[0] > 0)]

    def erase(self, user_id: str) -> bool:
        return self._run(*self._erase(user_id))

    def _known(self, user_id: str) -> list[Plan]:
        keys = self.user_keys(user_id)
        return [Plan(lambda pipe: pipe.exists(*keys), lambda r: r[0] > 0)]

    def known(self, user_id: str) -> bool:
        return self._run(*self._known(user_id))

    def _ping(self) -> list[Plan]:
        return [Plan(lambda pipe: pipe.ping(), lambda _: None)]

    def ping(self) -> None:
        self._run(*self._ping())

    async def aclose(self) -> None:
        if self._async is not None and self._async_loop is asyncio.get_running_loop():
            await self._async.aclose()
        self._async = None

    def close(self) -> None:
        self._redis.close()
