"""What the service logic calls to retrieve and rank: in-process models, or Ray Serve replicas.

Both backends have the same async methods, so `RecommendService` runs unchanged inside the
Ray ingress (calls go to the Retriever / Ranker deployments) and in-process (tests, the
latency benchmark without HTTP and Ray).
"""

from pathlib import Path

from recstack.serving.artifact import SessionSettings, use_session_settings
from recstack.serving.config import OnnxRuntimeSettings
from recstack.serving.item_index import Method, use_search_threads
from recstack.serving.model_slots import ModelSlots
from recstack.serving.model_watch import ModelWatch
from recstack.serving.ranking import Ranked, Ranker, RankRequest
from recstack.serving.retrieval import Candidates, RetrievalRequest, Retriever
from recstack.serving.store.base import OnlineStore


def use_onnxruntime(settings: OnnxRuntimeSettings, cpus: float) -> None:
    """Apply the serve config's onnxruntime settings to the sessions this process loads from
    now on, and to its ANN searches ("auto" threads: the `cpus` this replica or worker owns,
    at least 1)."""
    threads = settings.intra_op_threads
    if threads == "auto":
        threads = max(1, int(cpus))
    use_session_settings(SessionSettings(threads, settings.spinning))
    use_search_threads(threads)  # FAISS's OpenMP threads, the same share of the CPUs


def _info(slots: ModelSlots) -> dict:
    """What /readyz checks: {models: {name: {version, vocab}}, errors: {name: why}}."""
    return {
        "models": {
            name: {"version": m.artifact.version, "vocab": m.artifact.catalog.vocab_hash}
            for name, m in slots.models.items()
        },
        "errors": slots.errors,
    }


class RetrieverReplica:
    """Named retrievers of one replica (hot-swappable; with a store, also by the admin API)."""

    def __init__(
        self, models: dict[str, str], index: Method = "auto", store: OnlineStore | None = None
    ) -> None:
        self.index = index
        self.slots: ModelSlots[Retriever] = ModelSlots(lambda path: Retriever.load(path, index))
        self.slots.apply(models)
        self.watch = ModelWatch(store, "retriever", self.slots) if store else None

    def retrieve(self, model: str, requests: list[RetrievalRequest]) -> list[Candidates]:
        if self.watch:
            self.watch.poll()
        return self.slots.get(model).retrieve(requests)

    def info(self) -> dict:
        return _info(self.slots)


class RankerReplica:
    """Named rankers of one replica (hot-swappable); also popularity and similar items."""

    def __init__(self, models: dict[str, str], store: OnlineStore | None = None) -> None:
        self.slots: ModelSlots[Ranker] = ModelSlots(Ranker.load)
        self.slots.apply(models)
        self.watch = ModelWatch(store, "ranker", self.slots) if store else None

    def rank(self, model: str, requests: list[RankRequest]) -> list[Ranked]:
        if self.watch:
            self.watch.poll()
        return self.slots.get(model).rank(requests)

    def popular(self, model: str, k: int, exclude: list[str], explain: bool) -> Ranked:
        if self.watch:
            self.watch.poll()
        return self.slots.get(model).popular(k, exclude, explain)

    def similar(self, model: str, item_id: str, k: int) -> Ranked | None:
        return self.slots.get(model).similar(item_id, k)

    def unknown_items(self, model: str, item_ids: list[str]) -> int:
        return self.slots.get(model).artifact.catalog.to_idx(item_ids)[1]

    def info(self) -> dict:
        return _info(self.slots)


class LocalBackend:
    """Retriever and ranker in this process."""

    def __init__(
        self,
        retrievers: dict[str, str | Path],
        rankers: dict[str, str | Path],
        index: Method = "auto",
        store: OnlineStore | None = None,
    ):
        self.retriever = RetrieverReplica({k: str(v) for k, v in retrievers.items()}, index, store)
        self.ranker = RankerReplica({k: str(v) for k, v in rankers.items()}, store)

    async def retrieve(self, model: str, request: RetrievalRequest) -> Candidates:
        return self.retriever.retrieve(model, [request])[0]

    async def rank(self, model: str, request: RankRequest) -> Ranked:
        return self.ranker.rank(model, [request])[0]

    async def popular(self, model: str, k: int, exclude: list[str], explain: bool) -> Ranked:
        return self.ranker.popular(model, k, exclude, explain)

    async def similar(self, model: str, item_id: str, k: int) -> Ranked | None:
        return self.ranker.similar(model, item_id, k)

    async def unknown_items(self, model: str, item_ids: list[str]) -> int:
        return self.ranker.unknown_items(model, item_ids)

    async def info(self) -> dict:
        return {"retriever": self.retriever.info(), "ranker": self.ranker.info()}
