"""The Ray Serve application: Ingress (FastAPI) -> Retriever and Ranker deployments.

    serve run configs/serve_ml100k.yaml          # or: recstack serve --config <same yaml>

`build_app(args)` is the config's import_path; replica counts, autoscaling and the models
(`user_config`) of each deployment come from the YAML. Two pipelines:
- colocated (the default, one hop): retriever and ranker run inside each Ingress replica;
- split: the Ingress calls Retriever and Ranker deployments, which batch concurrent calls with
  `@serve.batch` (one ONNX run per batch) and scale on their own (e.g. a GPU ranker).
Every handler is async: with Ray's throughput mode, user code runs on the replica's main loop,
and model loads of a hot update run in a thread so requests keep being served meanwhile.
"""

import asyncio
import os

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from recstack.serving.api import attach, make_api
from recstack.serving.auth import ApiKeys
from recstack.serving.backend import (
    Backend,
    LocalBackend,
    RankerReplica,
    RetrieverReplica,
    follow,
    use_onnxruntime,
)
from recstack.serving.batching import grouped, unwrap
from recstack.serving.config import (
    INGRESS,
    RANKER,
    RETRIEVER,
    ModelsConfig,
    OnnxRuntimeSettings,
    colocated_models,
    parse_args,
    parse_models,
)
from recstack.serving.model_watch import ModelsFrom
from recstack.serving.ranking import Ranked, RankRequest
from recstack.serving.retrieval import Candidates, RetrievalRequest
from recstack.serving.service import build_service
from recstack.serving.store import open_store

BATCH = {"max_batch_size": 32, "batch_wait_timeout_s": 0.0005}
api = make_api()


def _set_batching(method, config: ModelsConfig) -> None:
    method.set_max_batch_size(config.max_batch_size)
    method.set_batch_wait_timeout_s(config.batch_wait_timeout_s)


def _use_replica_cpus(settings: dict) -> None:
    """onnxruntime threads for this replica: "auto" = the CPUs Ray assigned it."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    use_onnxruntime(OnnxRuntimeSettings.model_validate(settings), cpus)


class _Side:
    """One side's replica in a split-pipeline deployment: its models are loaded in the first
    `reconfigure`, before Ray marks the replica ready, as the app's `models_from` says."""

    side = ""

    def __init__(
        self, store: dict, onnxruntime: dict, models_from: ModelsFrom = "last_published"
    ) -> None:
        _use_replica_cpus(onnxruntime)
        self.store = open_store(store)  # where the admin API publishes model updates
        self.models_from = models_from
        self.replica = None

    def _new(self, config: ModelsConfig):
        raise NotImplementedError

    async def _load(self, config: ModelsConfig) -> None:
        index = getattr(self.replica, "index", config.index)  # a ranker has none
        if self.replica is None or index != config.index:
            replica, old = self._new(config), self.replica
            await asyncio.to_thread(
                follow, {self.side: replica}, {self.side: config.models}, self.store,
                self.models_from,
            )  # fmt: skip
            self.replica = replica
            if old is not None:
                old.watch.stop()
        else:
            await asyncio.to_thread(self.replica.watch.load, {self.side: config.models})

    async def info(self) -> dict:
        return self.replica.info()


@serve.deployment(name=RETRIEVER, ray_actor_options={"num_cpus": 0.25})
class RetrieverDeployment(_Side):
    side = "retriever"

    def _new(self, config: ModelsConfig) -> RetrieverReplica:
        return RetrieverReplica({}, config.index)

    async def reconfigure(self, user_config: dict) -> None:
        config = parse_models(user_config, RETRIEVER)
        await self._load(config)
        _set_batching(self._retrieve_batch, config)

    async def retrieve(self, model: str, request: RetrievalRequest) -> Candidates:
        return unwrap(await self._retrieve_batch((model, request)))

    @serve.batch(**BATCH)
    async def _retrieve_batch(self, calls: list[tuple[str, RetrievalRequest]]) -> list:
        return grouped(calls, self.replica.retrieve)


@serve.deployment(name=RANKER, ray_actor_options={"num_cpus": 0.25})
class RankerDeployment(_Side):
    side = "ranker"

    def _new(self, config: ModelsConfig) -> RankerReplica:
        return RankerReplica({})

    async def reconfigure(self, user_config: dict) -> None:
        config = parse_models(user_config, RANKER)
        await self._load(config)
        _set_batching(self._rank_batch, config)

    async def rank(self, model: str, request: RankRequest) -> Ranked:
        return unwrap(await self._rank_batch((model, request)))

    @serve.batch(**BATCH)
    async def _rank_batch(self, calls: list[tuple[str, RankRequest]]) -> list:
        return grouped(calls, self.replica.rank)

    async def popular(self, model: str, k: int, exclude: list[str], explain: bool) -> Ranked:
        return self.replica.popular(model, k, exclude, explain)

    async def similar(self, model: str, item_id: str, k: int) -> Ranked | None:
        return await self.replica.similar_off_loop(model, item_id, k)

    async def unknown_items(self, model: str, item_ids: list[str]) -> int:
        return self.replica.unknown_items(model, item_ids)


class RayBackend(Backend):
    """The service's backend calls, sent to the Retriever / Ranker replicas."""

    def __init__(self, retriever: DeploymentHandle, ranker: DeploymentHandle) -> None:
        self.retriever, self.ranker = retriever, ranker

    async def retrieve(self, model: str, request: RetrievalRequest) -> Candidates:
        return await self.retriever.retrieve.remote(model, request)

    async def rank(self, model: str, request: RankRequest) -> Ranked:
        return await self.ranker.rank.remote(model, request)

    async def popular(self, model: str, k: int, exclude: list[str], explain: bool) -> Ranked:
        return await self.ranker.popular.remote(model, k, exclude, explain)

    async def similar(self, model: str, item_id: str, k: int) -> Ranked | None:
        return await self.ranker.similar.remote(model, item_id, k)

    async def unknown_items(self, model: str, item_ids: list[str]) -> int:
        return await self.ranker.unknown_items.remote(model, item_ids)

    async def info(self) -> dict:
        return {
            "retriever": await self.retriever.info.remote(),
            "ranker": await self.ranker.info.remote(),
        }

    def user_artifacts(self) -> None:
        return None  # loaded by the Retriever / Ranker replicas, in other processes

    def close(self) -> None:
        return None  # the Retriever / Ranker replicas stop their own model watches


@serve.deployment(name=INGRESS, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    """The HTTP ingress. Split pipeline: calls the Retriever and Ranker deployments. Colocated
    (`retriever`, `ranker` None): runs both in this replica, models from its user_config."""

    def __init__(
        self, retriever: DeploymentHandle | None, ranker: DeploymentHandle | None, args: dict
    ) -> None:
        def backend(store):  # colocated: no models until reconfigure (503, never a 500)
            return LocalBackend({}, {}) if retriever is None else RayBackend(retriever, ranker)

        self.settings = parse_args(args)
        _use_replica_cpus(self.settings.onnxruntime.model_dump())
        self.service = build_service(self.settings, backend, f"ingress-{os.getpid()}")
        attach(self.service, ApiKeys.from_environment(), self.settings.rate_limit)

    async def reconfigure(self, user_config: dict) -> None:
        """Colocated pipeline only: load (or hot-swap) the models named in the user_config, or
        the published ones (models_from). Ray calls this before the replica is ready; later
        loads run in a thread: this replica keeps answering on the old models meanwhile."""
        models = colocated_models(user_config)
        retriever, ranker = models["retriever"], models["ranker"]
        backend = self.service.backend
        if backend.watch is not None and backend.retriever.index == retriever.index:
            await asyncio.to_thread(backend.reload, retriever.models, ranker.models)
        else:
            self.service.backend = await asyncio.to_thread(
                LocalBackend, retriever.models, ranker.models, retriever.index,
                self.service.store, self.settings.models_from,
            )  # fmt: skip
            backend.close()


def build_app(args: dict) -> serve.Application:
    """The app for `serve run` / `recstack serve`: args = the config's applications[0].args."""
    settings = parse_args(args)  # fail in the driver, before any replica starts
    if settings.pipeline == "colocated":
        return Ingress.bind(None, None, args)
    side = (settings.store, settings.onnxruntime.model_dump(), settings.models_from)
    return Ingress.bind(RetrieverDeployment.bind(*side), RankerDeployment.bind(*side), args)
