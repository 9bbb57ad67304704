"""Which models every replica serves: the config's, or a spec published by the admin API.

`POST /v1/admin/models` (models key) checks the new artifact dirs, then `publish` writes the
wanted `{name: dir}` per side into the store's meta key MODELS_KEY with a new generation.
Each replica process (uvicorn worker, Ray Ingress / Retriever / Ranker replica) has one
`ModelWatch` over the sides it serves:

- At start, and when its config's models change (a Ray `user_config` update), `load` reads
  the spec once, synchronously, and loads what the serve config's `models_from` says before
  the replica reports ready. The spec records, per side, the config it was published over
  (`config`): `last_published` serves the published models while the config still names the
  models it had then; once the config's models differ (it was edited since), the config is
  the newer change and wins. `config` serves the config's models at every start. Where the
  config wins over a published spec, the replica publishes the config's models as a new
  generation, so every replica, including those already running, serves the same models.
  With the store unreachable, the replica loads the config's models, says so (log, /readyz,
  the replica list), and makes the same choice once the store answers.
- A background thread looks at the spec every `every_s`, so a publication reaches idle
  replicas too; loads happen there (ModelSlots swap when done, no request waits), and a bad
  dir leaves the old model serving.
- Every `report_s` the thread records what this replica serves in REPLICAS_KEY (one JSON
  object for all replicas; entries older than STALE_S are dropped), which
  `GET /v1/admin/models` reads back.

Limits: one serve config per store (replicas of two different configs on one store would
keep publishing their own models). Records are read-modify-written without a transaction:
two replicas writing at once can drop one's record, which it writes again within `every_s`
(it sees its record missing). Ages come from the replicas' wall clocks.
"""

import json
import logging
import os
import socket
import threading
import time
from typing import Literal

from recstack.errors import RecstackError, first_line
from recstack.serving.model_slots import ModelSlots
from recstack.serving.store.base import OnlineStore, StoreUnavailable

MODELS_KEY = "models"  # {"generation": n, "retriever": {...}, "ranker": {...}, "config": {...}}
REPLICAS_KEY = "models.replicas"  # {replica id: what it serves, seen_at}
STALE_S = 30.0  # a replica that has not reported for this long is left out of the list
ModelsFrom = Literal["last_published", "config"]
log = logging.getLogger("recstack.serving")


def _spec(raw: str | None) -> dict:
    return json.loads(raw) if raw else {"generation": 0}


class ModelWatch:
    def __init__(
        self,
        store: OnlineStore,
        sides: dict[str, ModelSlots],
        models_from: ModelsFrom = "last_published",
        replica: str | None = None,
        every_s: float = 1.0,
        report_s: float = 5.0,
    ) -> None:
        self.store, self.sides, self.models_from = store, sides, models_from
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}"
        self.every_s, self.report_s = every_s, report_s
        self.config: dict[str, dict[str, str]] = {}
        self.generation: int | None = None  # of the spec this replica follows
        self.started = ""  # how its models were chosen (log, /readyz, the replica list)
        self._plain = True  # the config's models, nothing overridden: log at info
        self._seen: str | None = None  # the spec last acted on
        self._start_pending = True  # the start choice still waits for the store
        self._next_report = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self, config: dict[str, dict[str, str]]) -> None:
        """Load the models to serve now, synchronously (at start, and when the config's
        models change); then follow the published spec in the background."""
        with self._lock:
            self.config, self._start_pending, self._seen = config, True, None
            try:
                models = self._choose(self.store.get_meta(MODELS_KEY))
            except StoreUnavailable as exc:
                models, self._plain = config, False
                self.started = (
                    f"config (online store unreachable at start: {first_line(exc)}; "
                    "the published spec is read once it answers)"
                )
            self._apply(models)
        self._log_start()
        self._report()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="model-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _choose(self, raw: str | None) -> dict[str, dict[str, str]]:
        """The models of each side for the spec `raw`; where the config wins over it, the
        config's models become the published spec (a new generation)."""
        spec = _spec(raw)
        models, replaced, before = {}, [], int(spec.get("generation", 0))
        for side, config in self.config.items():
            published = spec.get(side) or {}
            config_wins = spec.get("config", {}).get(side) != config or (
                self._start_pending and self.models_from == "config" and published != config
            )
            models[side] = config if config_wins else {**config, **published}
            if config_wins:
                replaced.append(side)
        overridden = [s for s in replaced if spec.get(s) and spec[s] != self.config[s]]
        if replaced:
            spec = {**spec, "generation": before + 1, **{s: self.config[s] for s in replaced}}
            spec["config"] = {**spec.get("config", {}), **{s: self.config[s] for s in replaced}}
            raw = json.dumps(spec, sort_keys=True)
            self.store.set_meta(MODELS_KEY, raw)
        if self._start_pending:
            self._plain = models == self.config and not overridden
            if not replaced:
                self.started = f"published generation {before}"
            elif not overridden:
                self.started = f"config (published as generation {before + 1})"
            else:
                why = "models_from: config" if self.models_from == "config" else "config changed"
                self.started = f"config ({why}; replaces generation {before}, now {before + 1})"
        self._seen, self.generation, self._start_pending = raw, spec["generation"], False
        return models

    def _apply(self, models: dict[str, dict[str, str]]) -> None:
        for side, slots in self.sides.items():
            slots.apply(models.get(side, {}))

    def _log_start(self) -> None:
        """One line; a warning where a publication or the config overrode the other, or the
        store was unreachable."""
        log.log(
            logging.INFO if self._plain else logging.WARNING,
            "models_from=%s: replica %s serves %s, from %s",
            self.models_from,
            self.replica,
            json.dumps(self.versions(), sort_keys=True),
            self.started,
        )

    def versions(self) -> dict[str, dict[str, str]]:
        """side -> {name: artifact version} as served now."""
        return {
            side: {name: m.artifact.version for name, m in slots.models.items()}
            for side, slots in self.sides.items()
        }

    def check(self) -> None:
        """Act on a changed spec (and make the start choice once the store answers)."""
        raw = self.store.get_meta(MODELS_KEY)
        if raw == self._seen and not self._start_pending:
            return
        with self._lock:
            pending = self._start_pending
            models = self._choose(raw)
            self._apply(models)
        if pending:
            self._log_start()
        self._next_report = 0.0  # say at once what serves now

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check()
                if time.monotonic() >= self._next_report:
                    self._report()
            except StoreUnavailable:
                continue  # keep serving what is loaded
            except (RecstackError, ValueError) as exc:  # a closed store, a spec not ours
                log.warning("model watch of replica %s stopped: %s", self.replica, first_line(exc))
                return

    def _report(self) -> None:
        """Record what this replica serves in REPLICAS_KEY (drop stale records)."""
        try:
            replicas, now = _records(self.store), time.time()
            fresh = self.replica in replicas  # missing: first report, or lost to a race
            replicas = {r: v for r, v in replicas.items() if now - v["seen_at"] < STALE_S}
            replicas[self.replica] = {
                "models_from": self.models_from,
                "started": self.started,
                "generation": self.generation,
                "models": self.versions(),
                "errors": {s: dict(slots.errors) for s, slots in self.sides.items()},
                "seen_at": now,
            }
            self.store.set_meta(REPLICAS_KEY, json.dumps(replicas, sort_keys=True))
        except StoreUnavailable:
            fresh = False
        self._next_report = time.monotonic() + (self.report_s if fresh else self.every_s)


def _records(store: OnlineStore) -> dict[str, dict]:
    try:
        return json.loads(store.get_meta(REPLICAS_KEY) or "{}")
    except ValueError:
        return {}  # unreadable: the replicas write it anew


def served_models(store: OnlineStore) -> dict:
    """The published spec and each replica that reported within STALE_S (GET /v1/admin/models)."""
    raw, now = store.get_meta(MODELS_KEY), time.time()
    replicas = [
        {"replica": r, **v, "seen_s_ago": round(max(0.0, now - v.pop("seen_at")), 1)}
        for r, v in sorted(_records(store).items())
        if now - v["seen_at"] < STALE_S
    ]
    return {"published": json.loads(raw) if raw else None, "replicas": replicas}


def publish(store: OnlineStore, retriever: dict[str, str], ranker: dict[str, str]) -> int:
    """Record a new model spec for every replica; returns its generation. It keeps the
    config it is published over (`config`), which decides whether it outlives a restart."""
    current = _spec(store.get_meta(MODELS_KEY))
    generation = int(current.get("generation", 0)) + 1
    spec = {
        **current,
        "generation": generation,
        "retriever": {**current.get("retriever", {}), **retriever},
        "ranker": {**current.get("ranker", {}), **ranker},
    }
    store.set_meta(MODELS_KEY, json.dumps(spec, sort_keys=True))
    return generation
