"""Model updates from the admin endpoint, seen by every replica through the online store.

`POST /v1/admin/models` (admin key) checks the new artifact dirs, then writes the wanted
`{name: dir}` per side into the store's meta key MODELS_KEY with a new generation. Every
retriever / ranker replica (Ray deployments or uvicorn workers, on any machine sharing the
store) looks at that key at most once per `every_s`, in a background thread started from its
request path, and loads a changed spec there; its ModelSlots swap when the load is done, so
no request waits for the store or a load, and a bad dir leaves the old model serving.
"""

import json
import threading
import time

from recstack.serving.model_slots import ModelSlots
from recstack.serving.store.base import OnlineStore, StoreUnavailable

MODELS_KEY = "models"  # store meta: {"generation": n, "retriever": {...}, "ranker": {...}}


class ModelWatch:
    def __init__(self, store: OnlineStore, side: str, slots: ModelSlots, every_s: float = 1.0):
        self.store, self.side, self.slots, self.every_s = store, side, slots, every_s
        self._next_check, self._seen = 0.0, None
        self._lock = threading.Lock()

    def poll(self) -> None:
        """At most once per `every_s`, look for a new spec in a background thread (the
        request never waits for the store, even when it is down)."""
        now = time.monotonic()
        if now < self._next_check or self._lock.locked():
            return
        self._next_check = now + self.every_s
        threading.Thread(target=self._check, daemon=True).start()

    def _check(self) -> None:
        with self._lock:
            try:
                raw = self.store.get_meta(MODELS_KEY)
            except StoreUnavailable:
                return  # keep serving what is loaded
            if raw is None or raw == self._seen:
                return
            self._seen = raw
            spec = json.loads(raw).get(self.side) or {}
            if spec:
                self.slots.apply({**self.slots.paths, **spec})


def publish(store: OnlineStore, retriever: dict[str, str], ranker: dict[str, str]) -> int:
    """Record a new model spec for every replica; returns its generation."""
    raw = store.get_meta(MODELS_KEY)
    current = json.loads(raw) if raw else {"generation": 0, "retriever": {}, "ranker": {}}
    generation = int(current.get("generation", 0)) + 1
    spec = {
        "generation": generation,
        "retriever": {**current.get("retriever", {}), **retriever},
        "ranker": {**current.get("ranker", {}), **ranker},
    }
    store.set_meta(MODELS_KEY, json.dumps(spec, sort_keys=True))
    return generation
