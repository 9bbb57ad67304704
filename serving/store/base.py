"""The online store's interface: per-user recent history, consent, onboarding, service meta.

Ids are strings (external `user_id` / `item_id`, as the HTTP API takes them). Histories run
oldest -> newest and keep the last `max_history` items. Every method raises `StoreUnavailable`
when the backend cannot be reached, quickly (no hanging): the service catches it and answers
with the popularity fallback, saying so in the response.

Backends: `EmbeddedStore` (SQLite file, one machine, several replica processes) and
`RedisStore` (several machines). `tests/serving/test_store.py` is the contract both pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from recstack.errors import RecstackError

DEFAULT_MAX_HISTORY = 200


class StoreUnavailable(RecstackError):
    """The store's backend cannot be reached or refused the operation; fall back, retry later."""


class OnlineStore(ABC):
    """Per-user online state behind one small interface."""

    name = "online store"  # how messages name it (backends say which store, without secrets)

    def __init__(self, max_history: int = DEFAULT_MAX_HISTORY):
        if not isinstance(max_history, int) or max_history < 1:
            raise RecstackError(f"max_history must be an integer >= 1, got {max_history!r}")
        self.max_history = max_history

    # ------------------------------------------------------------------ histories

    @abstractmethod
    def extend_histories(self, histories: Mapping[str, Sequence[str]]) -> None:
        """Append items (oldest first) to several users' histories in one write; trim each."""

    @abstractmethod
    def set_histories(self, histories: Mapping[str, Sequence[str]]) -> None:
        """Replace several users' histories (oldest first) in one write; keep the last max_history."""

    @abstractmethod
    def histories(self, user_ids: Sequence[str], limit: int) -> list[list[str]]:
        """The last `limit` items of each user (oldest -> newest; [] if none), in one read."""

    def append_history(self, user_id: str, item_ids: Sequence[str]) -> None:
        """Append `item_ids` (oldest first) to the user's history, keeping the last max_history."""
        if item_ids:
            self.extend_histories({user_id: item_ids})

    def history(self, user_id: str, limit: int) -> list[str]:
        """The user's last `limit` items, oldest -> newest."""
        return self.histories([user_id], limit)[0]

    # ------------------------------------------------------------------ consent, onboarding

    @abstractmethod
    def set_consent(self, user_id: str, consent: Mapping[str, bool]) -> None:
        """Replace the user's consent record, e.g. {"personalization": True, "analytics": False}."""

    @abstractmethod
    def consent(self, user_id: str) -> dict[str, bool] | None:
        """The user's consent record; None if it was never set."""

    @abstractmethod
    def set_onboarding(self, user_id: str, item_ids: Sequence[str]) -> None:
        """Replace the items a new user picked at onboarding (cold start)."""

    @abstractmethod
    def onboarding(self, user_id: str) -> list[str]:
        """The user's onboarding picks ([] if none)."""

    # ------------------------------------------------------------------ service-wide values

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Store a service-wide value (e.g. the active model version)."""

    @abstractmethod
    def get_meta(self, key: str) -> str | None:
        """A service-wide value, None if unset."""

    # ------------------------------------------------------------------ a user's data as a whole

    @abstractmethod
    def user_data(self, user_id: str) -> dict[str, Any]:
        """Everything stored about the user (data export), read as one snapshot:
        {"user_id", "history" (all kept items), "consent" (None if never set), "onboarding"}."""

    @abstractmethod
    def erase(self, user_id: str) -> bool:
        """Delete every key/row of the user in one atomic write; True if anything existed."""

    @abstractmethod
    def known(self, user_id: str) -> bool:
        """True if the store holds any state for the user."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the backend answers."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""

    async def call_async(self, method: str, *args) -> Any:
        """`getattr(self, method)(*args)` for an event loop. A local store answers inline (a
        SQLite call is tens of µs); a network store overrides this with its asyncio client,
        so a hung backend holds no thread and a timeout can cancel the call."""
        return getattr(self, method)(*args)

    async def aclose(self) -> None:
        """Release what `call_async` opened in the running loop (before `close`)."""
        return None  # a local store opened nothing

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_limit(limit: int) -> int:
    """History read limits are ints >= 0 (0 reads nothing)."""
    if not isinstance(limit, int) or limit < 0:
        raise RecstackError(f"history limit must be an integer >= 0, got {limit!r}")
    return limit


def consent_record(consent: Mapping[str, bool]) -> dict[str, bool]:
    """Validate a consent mapping: string purposes -> booleans."""
    if not isinstance(consent, Mapping) or not all(
        isinstance(k, str) and isinstance(v, bool) for k, v in consent.items()
    ):
        raise RecstackError(
            f"consent must map purpose names to true/false, got {consent!r}; "
            'e.g. {"personalization": true}'
        )
    return dict(consent)
