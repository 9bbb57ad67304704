"""The service's online state (docs/architecture.md §8): `open_store(spec)` -> an `OnlineStore`.

Specs (a dict, e.g. the `store:` section of the serve config):
    {"kind": "embedded", "path": "runs/serve/state.sqlite"}      one machine (SQLite, WAL)
    {"kind": "redis", "url": "redis://127.0.0.1:6379/0"}         several replicas / machines
Optional in both: "max_history" (default 200); Redis also takes "prefix" and "timeout_s",
embedded "busy_timeout_s".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recstack.errors import RecstackError
from recstack.serving.store.base import DEFAULT_MAX_HISTORY, OnlineStore, StoreUnavailable

__all__ = ["STORE_KINDS", "OnlineStore", "StoreUnavailable", "open_store"]

# kind -> (required field, optional fields)
STORE_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "embedded": ("path", ("max_history", "busy_timeout_s")),
    "redis": ("url", ("max_history", "prefix", "timeout_s")),
}


def open_store(spec: Mapping[str, Any]) -> OnlineStore:
    """Open the online store a config dict describes (see the module docstring)."""
    if not isinstance(spec, Mapping):
        raise RecstackError(
            f"store spec must be a mapping like {{'kind': 'embedded', 'path': ...}}, got {spec!r}"
        )
    kind = spec.get("kind")
    if kind not in STORE_KINDS:
        raise RecstackError(
            f"store kind {kind!r} is not one of {', '.join(STORE_KINDS)}; "
            "set store.kind in the serve config"
        )
    required, optional = STORE_KINDS[kind]
    if not spec.get(required):
        raise RecstackError(f"a {kind} store needs {required!r} in its spec (got {dict(spec)})")
    unknown = set(spec) - {"kind", required, *optional}
    if unknown:
        raise RecstackError(
            f"unknown field(s) {', '.join(sorted(unknown))} in the {kind} store spec; "
            f"allowed: {', '.join([required, *optional])}"
        )
    options = {k: spec[k] for k in optional if k in spec}
    options.setdefault("max_history", DEFAULT_MAX_HISTORY)
    if kind == "embedded":
        from recstack.serving.store.embedded import EmbeddedStore

        return EmbeddedStore(Path(spec["path"]), **options)
    from recstack.serving.store.redis_store import RedisStore

    return RedisStore(str(spec["url"]), **options)
