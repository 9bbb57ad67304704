"""The product logic behind the HTTP routes, free of FastAPI and Ray.

recommend: consent -> arm -> history (request, online store, onboarding) -> retrieve N ->
rank k -> explanations. Whenever the model cannot personalise, the popularity ranking answers
and the response says why (`fallback`): cold_start (no usable history), opted_out (consent),
store_unavailable (the online store is down). The popularity control arm is not a fallback.

events: durable in the event log first (202 only after fsync), then appended to the users'
online histories, so the next recommendation sees them on any replica sharing the store.
"""

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import pyarrow.compute as pc

from recstack.artifact import check_same_vocab
from recstack.artifact_manifest import ARTIFACT_KIND
from recstack.dataset_dir import DATASET_KIND
from recstack.errors import RecstackError
from recstack.schema import (
    ARM,
    CONTEXT,
    EVENT_TYPE,
    ITEM_ID,
    MODEL_VERSION,
    REQUEST_ID,
    TS,
    USER_ID,
    VALUE,
)
from recstack.serving import metrics, schemas
from recstack.serving.backend import Backend
from recstack.serving.config import AppArgs
from recstack.serving.event_log import INTERACTION_TYPES, EventLog, read_events, tombstone
from recstack.serving.experiment_report import experiment_report
from recstack.serving.experiments import Arm, Experiment, assign
from recstack.serving.model_watch import publish
from recstack.serving.ranking import Ranked, Ranker, RankRequest
from recstack.serving.retrieval import RetrievalRequest, Retriever
from recstack.serving.served_window import ServedWindow
from recstack.serving.store import open_store
from recstack.serving.store.base import OnlineStore, StoreUnavailable
from recstack.serving.store.guard import GuardSettings, StoreGuard
from recstack.serving.store.seed import SeedWatch
from recstack.serving.timing import stage
from recstack.user_files import forget_hint, holds_user

MAX_OTHER_VERSIONS = 16  # model versions named by events that this replica did not serve


class NotFound(RecstackError):
    """An id the service does not know (-> 404)."""


@dataclass
class ServiceSettings:
    default_model: str = "main"  # model set for users outside any experiment
    retrieve_n: int = 100  # candidates the retriever hands the ranker
    history_limit: int = 200  # most recent items read from the online store
    store_guard: GuardSettings = field(default_factory=GuardSettings)  # store call bounds


def _items(ranked: Ranked) -> list[schemas.Item]:
    reasons = ranked.reasons or [None] * len(ranked.item_ids)
    return [
        schemas.Item(item_id=i, score=s, title=t or None, reason=r)
        for i, s, t, r in zip(ranked.item_ids, ranked.scores, ranked.titles, reasons, strict=True)
    ]


class RecommendService:
    def __init__(
        self,
        backend: Backend,
        store: OnlineStore,
        event_log: EventLog,
        experiment: Experiment | None,
        settings: ServiceSettings,
        seed_watch: SeedWatch | None = None,
    ) -> None:
        self.backend, self.store, self.log = backend, store, event_log
        self.guard = StoreGuard(store, settings.store_guard)
        self.seed_watch = seed_watch  # with seed_histories_from: keeps the store seeded
        self.experiment, self.settings = experiment, settings
        self.versions_served: set[str] = set()  # model versions of this replica's responses
        self.versions_seen: set[str] = set()  # others named by events (_version_label)
        self.served = ServedWindow()  # its lists of the last minutes: catalogue coverage
        self.default_arm = Arm(
            name=settings.default_model, kind="model", model=settings.default_model, weight=1.0
        )
        if experiment is not None:
            model_arms = [a for a in experiment.arms if a.kind == "model"]
            self.default_arm = model_arms[0] if model_arms else self.default_arm
        arms = experiment.arms if experiment is not None else [self.default_arm]
        for arm, fallback in itertools.product(arms, ["none", *get_args(schemas.Fallback)]):
            metrics.RECOMMENDATIONS.labels(arm.name, fallback)  # series at 0 from the start

    def arm_of(self, user_id: str | None) -> Arm:
        if user_id is None or self.experiment is None:
            return self.default_arm  # anonymous sessions are outside the experiment
        return assign(self.experiment, user_id)

    async def _store(self, method: str, *args, deadline: float | None = None):
        """One store call, bounded by the guard (its timeout, the request's `deadline`, the
        circuit): a slow or hung store costs a request milliseconds, then its fallback."""
        return await self.guard.call(method, *args, deadline=deadline)

    def models_needed(self) -> set[str]:
        arms = self.experiment.arms if self.experiment else [self.default_arm]
        return {self.settings.default_model} | {a.model for a in arms if a.model}

    async def close(self) -> None:
        """A graceful stop: seal this writer's open event-log segment, close the store."""
        if self.seed_watch is not None:
            self.seed_watch.stop()
        self.backend.close()  # stops following published models
        await self.guard.aclose()
        await asyncio.to_thread(self.log.close)
        self.store.close()

    async def readiness(self) -> list[str]:
        """Why this replica cannot serve yet (empty list = ready)."""
        problems = []
        try:
            await self._store("ping")
        except StoreUnavailable as exc:
            problems.append(f"online store: {exc}")
        info = await self.backend.info()
        for name in sorted(self.models_needed()):
            found = [info[side]["models"].get(name) for side in ("retriever", "ranker")]
            if None in found:
                sides = [
                    s for s, f in zip(("retriever", "ranker"), found, strict=True) if f is None
                ]
                problems.append(f"model {name!r} not loaded by the {' and '.join(sides)}")
            elif found[0]["vocab"] != found[1]["vocab"]:
                problems.append(
                    f"model {name!r}: retriever and ranker come from different datasets"
                )
        for side in ("retriever", "ranker"):
            problems += [f"{side} {name}: {err}" for name, err in info[side]["errors"].items()]
        if self.seed_watch is not None:
            problems += self.seed_watch.problems()  # the store lost its seed (emptied Redis)
        return problems

    # ---- recommend ------------------------------------------------------------------------

    async def recommend(self, req: schemas.RecommendRequest) -> schemas.RecommendResponse:
        start = time.perf_counter()
        request_id = uuid.uuid4().hex
        arm = self.arm_of(req.user_id)
        model = arm.model or self.settings.default_model
        fallback, source, history = None, None, []
        deadline = self.guard.deadline()
        try:
            with stage("store_read"):
                consent = None
                if req.user_id:
                    consent = await self._store("consent", req.user_id, deadline=deadline)
                if consent is not None and not consent.get("personalization", True):
                    fallback = "opted_out"
                elif req.recent_items is not None:
                    history, source = list(req.recent_items), "request"
                elif req.user_id:
                    limit = self.settings.history_limit
                    history = await self._store("history", req.user_id, limit, deadline=deadline)
                    source = "history"
                    if not history:
                        history = await self._store("onboarding", req.user_id, deadline=deadline)
                        source = "onboarding"
        except StoreUnavailable:
            fallback, history = "store_unavailable", list(req.recent_items or [])
            source = "request" if history else None
        ranked, unknown = None, 0
        if fallback in (None, "store_unavailable") and history and arm.kind == "model":
            query = RetrievalRequest(
                history, dict(req.context), req.user_id, list(req.exclude), self.settings.retrieve_n
            )
            with stage("retrieve"):
                candidates = await self.backend.retrieve(model, query)
            unknown = candidates.unknown_items
            if candidates.item_ids:
                with stage("rank"):
                    ranked = await self.backend.rank(
                        model, RankRequest(history, candidates.item_ids, req.k, req.explain)
                    )
                fallback = None  # personalised from the request's own history
        if ranked is None:
            fallback = fallback or ("cold_start" if arm.kind == "model" else None)
            source = None
            with stage("popular"):
                exclude = [*history, *req.exclude]
                ranked = await self.backend.popular(model, req.k, exclude, req.explain)
        version = (
            ranked.model_version if arm.kind == "model" else f"popularity@{ranked.model_version}"
        )
        self.versions_served.add(version)
        self.served.add(ranked.item_ids)
        metrics.SERVED_COVERAGE.set(self.served.coverage(ranked.catalogue_size))
        if ranked.item_ids:
            metrics.SERVED_POPULARITY.labels(arm.name).observe(ranked.popularity)
        metrics.UNKNOWN_ITEMS.inc(unknown)
        metrics.RECOMMENDATIONS.labels(arm.name, fallback or "none").inc()
        metrics.RECOMMEND_LATENCY.labels(arm.name).observe(time.perf_counter() - start)
        return schemas.RecommendResponse(
            items=_items(ranked),
            arm=arm.name,
            model_version=version,
            fallback=fallback,
            personalised_from=source if fallback is None and arm.kind == "model" else None,
            unknown_items=unknown,
            request_id=request_id,
        )

    async def similar(self, item_id: str, k: int) -> schemas.SimilarResponse:
        ranked = await self.backend.similar(self.settings.default_model, item_id, k)
        if ranked is None:
            raise NotFound(f"item {item_id!r} is not in the catalogue")
        return schemas.SimilarResponse(
            item_id=item_id,
            items=_items(ranked),
            model_version=ranked.model_version,
            request_id=uuid.uuid4().hex,
        )

    # ---- events and user state --------------------------------------------------------------

    async def _tracking_allowed(
        self, user_id: str, cache: dict[str | None, bool], deadline: float
    ) -> bool:
        """After one failed read the store counts as down for the rest of the request
        (cache[None]): a batch of many users costs one store timeout, not one per user."""
        if user_id not in cache:
            consent = None  # unknown consent (store down): the default (tracking on) applies
            if not cache.get(None):
                try:
                    consent = await self._store("consent", user_id, deadline=deadline)
                except StoreUnavailable:
                    cache[None] = True
            cache[user_id] = consent is None or consent.get("tracking", True)
        return cache[user_id]

    def _version_label(self, row: dict) -> str:
        """An event's model version as a metric label: "none", one this replica served, one of
        the first MAX_OTHER_VERSIONS others it saw (another replica's lists), else "other": a
        client's free text must not grow the metric's series without bound."""
        version = row[MODEL_VERSION]
        if version is None:
            return "none"
        if version in self.versions_served or version in self.versions_seen:
            return version
        if len(self.versions_seen) < MAX_OTHER_VERSIONS:
            self.versions_seen.add(version)
            return version
        return "other"

    async def events(self, req: schemas.EventsRequest) -> schemas.EventsResponse:
        allowed: dict[str | None, bool] = {}
        rows, deadline = [], self.guard.deadline()
        for event in req.events:
            if not await self._tracking_allowed(event.user_id, allowed, deadline):
                continue
            rows.append(  # the log stamps received_at and writes the context as JSON text
                {
                    USER_ID: event.user_id,
                    ITEM_ID: event.item_id,
                    EVENT_TYPE: event.type,
                    TS: event.ts,
                    ARM: self.arm_of(event.user_id).name,
                    MODEL_VERSION: event.model_version,
                    REQUEST_ID: event.request_id,
                    VALUE: event.value,
                    CONTEXT: event.context,
                }
            )
        if rows:
            with stage("log_append"):
                await asyncio.to_thread(self.log.append, rows)  # durable before we answer
        dropped = len(req.events) - len(rows)
        metrics.EVENTS_DROPPED.inc(dropped)
        for row in rows:
            metrics.EVENTS.labels(row[EVENT_TYPE], row[ARM], self._version_label(row)).inc()
        updated = not allowed.get(None)  # no second timeout once the store is known down
        if updated:
            try:
                with stage("store_write"):
                    await self._store("extend_histories", _histories(rows))  # one round trip
            except StoreUnavailable:
                updated = False
        return schemas.EventsResponse(
            accepted=len(rows), dropped_no_consent=dropped, history_updated=updated
        )

    async def set_consent(self, user_id: str, consent: schemas.Consent) -> schemas.Consent:
        await self._store("set_consent", user_id, consent.model_dump())
        return consent

    async def onboarding(
        self, user_id: str, body: schemas.Onboarding
    ) -> schemas.OnboardingResponse:
        unknown = await self.backend.unknown_items(self.settings.default_model, body.items)
        await self._store("set_onboarding", user_id, list(body.items))
        metrics.UNKNOWN_ITEMS.inc(unknown)
        return schemas.OnboardingResponse(stored=len(body.items), unknown_items=unknown)

    async def user_data(self, user_id: str) -> schemas.UserData:
        state = await self._store("user_data", user_id)
        events = await asyncio.to_thread(read_events, self.log.directory)
        mine = events.filter(pc.equal(events["user_id"], user_id))
        history, consent = state.get("history", []), state.get("consent")
        onboarding = state.get("onboarding", [])
        in_store = bool(history or onboarding or consent is not None)
        log_dir = str(self.log.directory)
        return schemas.UserData(
            user_id=user_id,
            history=history,
            consent=consent,
            onboarding=onboarding,
            events=mine.to_pylist(),
            locations=[
                schemas.DataLocation(place="online_store", holds_user=in_store),
                schemas.DataLocation(place="event_log", path=log_dir, holds_user=mine.num_rows > 0),
                *await asyncio.to_thread(_file_locations, self, user_id),
            ],
        )

    async def erase(self, user_id: str) -> schemas.ErasureResponse:
        # the tombstone first: a seed running meanwhile then skips the user or erases them again
        await asyncio.to_thread(tombstone, self.log.directory, user_id)
        erased = await self._store("erase", user_id)
        await asyncio.to_thread(self.log.seal)  # this replica's rows of the user leave disk now
        log_dir = str(self.log.directory)
        locations = [
            schemas.DataLocation(place="online_store", holds_user=False),
            schemas.DataLocation(
                place="event_log",
                path=log_dir,
                holds_user=False,
                note="tombstoned: no read, replay, seed or `data prepare` returns the user's "
                f"events; `recstack events compact --log {log_dir}` also removes the rows "
                "of sealed segments from disk",
            ),
            *await asyncio.to_thread(_file_locations, self, user_id),
        ]
        return schemas.ErasureResponse(
            user_id=user_id,
            erased_online_state=erased,
            event_log_tombstoned=True,
            locations=locations,
            complete=all(place.holds_user is False for place in locations),
        )

    async def update_models(self, body: schemas.ModelUpdate) -> schemas.ModelUpdateResponse:
        """Check every new artifact here, then publish them for all replicas (model_watch)."""
        if not body.retriever and not body.ranker:
            raise RecstackError("name at least one retriever or ranker model: {name: artifact dir}")
        unknown = sorted((set(body.retriever) | set(body.ranker)) - self.models_needed())
        if unknown:
            raise RecstackError(
                f"unknown model name(s) {unknown}; this service serves {sorted(self.models_needed())}"
            )
        loaded = {
            side: {name: await asyncio.to_thread(load, Path(path)) for name, path in spec.items()}
            for side, spec, load in (
                ("retriever", body.retriever, Retriever.load),
                ("ranker", body.ranker, Ranker.load),
            )
        }  # raises DataError (-> 400) for a missing or corrupt dir: nothing is published
        for name in set(loaded["retriever"]) & set(loaded["ranker"]):
            check_same_vocab(loaded["retriever"][name].artifact, loaded["ranker"][name].artifact)
        try:
            generation = publish(self.store, dict(body.retriever), dict(body.ranker))
        except StoreUnavailable:
            metrics.STORE_ERRORS.labels("error").inc()
            raise  # -> 503: nothing was published
        return schemas.ModelUpdateResponse(
            generation=generation,
            retriever=dict(body.retriever),
            ranker=dict(body.ranker),
            note="checked; every replica loads them within about a second and then swaps",
        )

    async def experiment_report(self) -> dict:
        """The A/B report of the whole log, with guardrails from this service's metrics
        (every process's sums where metrics.exposition() aggregates them)."""
        events = await asyncio.to_thread(read_events, self.log.directory)
        exposition = await asyncio.to_thread(metrics.exposition)
        return await asyncio.to_thread(
            experiment_report,
            events,
            self.experiment,
            guardrails=exposition,
            guardrails_source="this service's /metrics",
        )


def build_service(
    args: AppArgs, make_backend: Callable[[OnlineStore], Backend], writer: str
) -> RecommendService:
    """The service a config's args describe: the store (seeded from the dataset when
    `seed_histories_from` is set, without erased users, and re-seeded in the background if it
    loses the seed), an event-log writer named `writer`, and the backend `make_backend(store)`
    returns (Ray handles, or models in this process)."""
    store = open_store(args.store)
    watch = None
    if args.seed_histories_from is not None:
        watch = SeedWatch(store, args.seed_histories_from, args.history_limit, args.event_log)
        watch.check()  # seeds a store that lacks the seed, before this replica serves
    service = RecommendService(
        make_backend(store),
        store,
        EventLog(args.event_log, writer=writer),
        args.experiment,
        ServiceSettings(args.default_model, args.retrieve_n, args.history_limit, args.store_guard),
        watch,
    )
    if watch is not None:
        watch.start()  # re-seeds a store that loses the seed, until service.close()
    return service


def _histories(rows: list[dict]) -> dict[str, list[str]]:
    """user -> item ids of history events, in event-time order (stable)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for row in rows:
        if row[EVENT_TYPE] in INTERACTION_TYPES:
            out.setdefault(row[USER_ID], []).append((row[TS], row[ITEM_ID]))
    return {u: [i for _, i in sorted(pairs, key=lambda p: p[0])] for u, pairs in out.items()}


def _file_locations(service: RecommendService, user_id: str) -> list[schemas.DataLocation]:
    """The seed dataset and the served artifacts with user rows, each checked for the user."""
    dirs = {}  # path -> (place, kind)
    if service.seed_watch is not None:
        dirs[service.seed_watch.dataset] = ("seed_dataset", DATASET_KIND)
    artifacts = service.backend.user_artifacts()  # None: a split pipeline's, out of sight
    for path in artifacts or []:
        dirs[path] = ("artifact", ARTIFACT_KIND)
    out = []
    for path, (place, kind) in dirs.items():
        try:
            held = holds_user(path, kind, user_id)
        except RecstackError as exc:
            out.append(
                schemas.DataLocation(
                    place=place, path=str(path), holds_user=None, note=f"cannot check: {exc}"
                )
            )
            continue
        note = None
        if held and place == "seed_dataset":
            note = "seeding skips erased users; to remove them from the files: "
        elif held:
            note = "user_features.parquet; the model keeps it until restarted; remove it with: "
        out.append(
            schemas.DataLocation(
                place=place,
                path=str(path),
                holds_user=held,
                note=note and note + forget_hint(kind, path, user_id),
            )
        )
    if artifacts is None:
        out.append(
            schemas.DataLocation(
                place="artifact",
                holds_user=None,
                note="the Retriever / Ranker deployments' artifacts are not visible here: "
                "check each two-tower artifact with `recstack data forget --artifact DIR "
                f"--user {user_id}`",
            )
        )
    return out
