"""What the service logic calls to retrieve and rank: in-process models, or Ray Serve replicas.

`Backend` is that surface, declared once. `LocalBackend` (models in this process: the
colocated pipeline, tests, the latency benchmark without HTTP and Ray) and `RayBackend`
(serving/app.py: calls to the split pipeline's Retriever / Ranker deployments) implement it,
so `RecommendService` runs unchanged on either.
"""

import asyncio
from pathlib import Path
from typing import Protocol

from recstack.artifact import SessionSettings, use_session_settings
from recstack.item_index import Method, use_search_threads
from recstack.serving.config import OnnxRuntimeSettings
from recstack.serving.model_slots import ModelSlots
from recstack.serving.model_watch import ModelsFrom, ModelWatch
from recstack.serving.ranking import Ranked, Ranker, RankRequest
from recstack.serving.retrieval import Candidates, RetrievalRequest, Retriever
from recstack.serving.store.base import OnlineStore

OFF_LOOP_ITEMS = 100_000  # larger catalogues search similar items in a worker thread


class Backend(Protocol):
    """The retriever and ranker calls of one service replica; `model` names a model set."""

    async def retrieve(self, model: str, request: RetrievalRequest) -> Candidates:
        """Candidate items for one query (the retriever)."""
        ...

    async def rank(self, model: str, request: RankRequest) -> Ranked:
        """The top `request.k` of the candidates (the ranker)."""
        ...

    async def popular(self, model: str, k: int, exclude: list[str], explain: bool) -> Ranked:
        """The k most popular items not in `exclude` (the fallback and the control arm)."""
        ...

    async def similar(self, model: str, item_id: str, k: int) -> Ranked | None:
        """Items like `item_id`; None for an item outside the catalogue."""
        ...

    async def unknown_items(self, model: str, item_ids: list[str]) -> int:
        """How many of `item_ids` the model's catalogue lacks."""
        ...

    async def info(self) -> dict:
        """{"retriever": ..., "ranker": ...}: each side's models, errors and model source."""
        ...

    def user_artifacts(self) -> list[Path] | None:
        """The served artifact dirs that hold user rows (two-tower user features); None
        when the models run in other processes, out of this replica's sight."""
        ...

    def close(self) -> None:
        """Stop following published models."""
        ...


def use_onnxruntime(settings: OnnxRuntimeSettings, cpus: float) -> None:
    """Apply the serve config's onnxruntime settings to the sessions this process loads from
    now on, and to its ANN searches ("auto" threads: the `cpus` this replica or worker owns,
    at least 1)."""
    threads = settings.intra_op_threads
    if threads == "auto":
        threads = max(1, int(cpus))
    use_session_settings(SessionSettings(threads, settings.spinning))
    use_search_threads(threads)  # FAISS's OpenMP threads, the same share of the CPUs


def _info(slots: ModelSlots, watch: ModelWatch | None) -> dict:
    """What /readyz checks: {models: {name: {version, vocab}}, errors: {name: why}}, and how
    this replica chose its models (`started`)."""
    return {
        "models": {
            name: {"version": m.artifact.version, "vocab": m.artifact.catalog.vocab_hash}
            for name, m in slots.models.items()
        },
        "errors": slots.errors,
        "started": watch.started if watch else "config (no store to follow)",
    }


class RetrieverReplica:
    """Named retrievers of one replica (hot-swappable: ModelSlots, followed by a ModelWatch)."""

    def __init__(self, models: dict[str, str], index: Method = "auto") -> None:
        self.index = index
        self.slots: ModelSlots[Retriever] = ModelSlots(lambda path: Retriever.load(path, index))
        self.slots.apply(models)
        self.watch: ModelWatch | None = None

    def retrieve(self, model: str, requests: list[RetrievalRequest]) -> list[Candidates]:
        return self.slots.get(model).retrieve(requests)

    def info(self) -> dict:
        return _info(self.slots, self.watch)


class RankerReplica:
    """Named rankers of one replica (hot-swappable); also popularity and similar items."""

    def __init__(self, models: dict[str, str]) -> None:
        self.slots: ModelSlots[Ranker] = ModelSlots(Ranker.load)
        self.slots.apply(models)
        self.watch: ModelWatch | None = None

    def rank(self, model: str, requests: list[RankRequest]) -> list[Ranked]:
        return self.slots.get(model).rank(requests)

    def popular(self, model: str, k: int, exclude: list[str], explain: bool) -> Ranked:
        return self.slots.get(model).popular(k, exclude, explain)

    def similar(self, model: str, item_id: str, k: int) -> Ranked | None:
        return self.slots.get(model).similar(item_id, k)

    async def similar_off_loop(self, model: str, item_id: str, k: int) -> Ranked | None:
        """`similar`, in a worker thread for a large catalogue: an exact search over 1M items
        takes ~18 ms (numpy releases the GIL), which on the event loop stalls every other
        request of this replica; small catalogues answer in well under a millisecond inline."""
        if len(self.slots.get(model).artifact.catalog.item_ids) > OFF_LOOP_ITEMS:
            return await asyncio.to_thread(self.similar, model, item_id, k)
        return self.similar(model, item_id, k)

    def unknown_items(self, model: str, item_ids: list[str]) -> int:
        return self.slots.get(model).artifact.catalog.to_idx(item_ids)[1]

    def info(self) -> dict:
        return _info(self.slots, self.watch)


def follow(
    replicas: dict[str, RetrieverReplica | RankerReplica],
    config: dict[str, dict[str, str]],
    store: OnlineStore,
    models_from: ModelsFrom,
    replica: str | None = None,
) -> ModelWatch:
    """Load the models `models_from` says (the config's, or the published ones) into these
    replicas, which start empty, before they serve; then follow the published spec."""
    watch = ModelWatch(store, {s: r.slots for s, r in replicas.items()}, models_from, replica)
    for r in replicas.values():
        r.watch = watch
    watch.load(config)
    return watch


class LocalBackend(Backend):
    """Retriever and ranker in this process. With a store, the models `models_from` says are
    loaded before the first request, and publications are followed (serving/model_watch.py);
    `replica` names this process in the store's replica list (default host:pid)."""

    def __init__(
        self,
        retrievers: dict[str, str | Path],
        rankers: dict[str, str | Path],
        index: Method = "auto",
        store: OnlineStore | None = None,
        models_from: ModelsFrom = "last_published",
        replica: str | None = None,
    ):
        config = {
            "retriever": {k: str(v) for k, v in retrievers.items()},
            "ranker": {k: str(v) for k, v in rankers.items()},
        }
        watched = store is not None
        self.retriever = RetrieverReplica({} if watched else config["retriever"], index)
        self.ranker = RankerReplica({} if watched else config["ranker"])
        self.watch = None
        if watched:
            sides = {"retriever": self.retriever, "ranker": self.ranker}
            self.watch = follow(sides, config, store, models_from, replica)

    def reload(self, retrievers: dict[str, str], rankers: dict[str, str]) -> None:
        """New config models (a Ray user_config update), as models_from says."""
        if self.watch is None:
            self.retriever.slots.apply(retrievers)
            self.ranker.slots.apply(rankers)
        else:
            self.watch.load({"retriever": dict(retrievers), "ranker": dict(rankers)})

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()

    async def retrieve(self, model: str, request: RetrievalRequest) -> Candidates:
        return self.retriever.retrieve(model, [request])[0]

    async def rank(self, model: str, request: RankRequest) -> Ranked:
        return self.ranker.rank(model, [request])[0]

    async def popular(self, model: str, k: int, exclude: list[str], explain: bool) -> Ranked:
        return self.ranker.popular(model, k, exclude, explain)

    async def similar(self, model: str, item_id: str, k: int) -> Ranked | None:
        return await self.ranker.similar_off_loop(model, item_id, k)

    async def unknown_items(self, model: str, item_ids: list[str]) -> int:
        return self.ranker.unknown_items(model, item_ids)

    async def info(self) -> dict:
        return {"retriever": self.retriever.info(), "ranker": self.ranker.info()}

    def user_artifacts(self) -> list[Path]:
        return [
            model.artifact.path
            for side in (self.retriever, self.ranker)
            for model in side.slots.models.values()
            if model.artifact.manifest.user_features is not None
        ]
