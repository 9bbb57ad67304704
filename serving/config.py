"""The recstack part of a Serve config YAML: `applications[0].args` (`AppArgs`), and the models
of the Retriever / Ranker deployments (their `user_config`, `ModelsConfig`).

    ray: {proxy: haproxy, throughput_optimized: true, lean: true}  # RaySettings (Ray engine)
    applications:
    - name: recstack
      import_path: recstack.serving.app:build_app
      args: {store: ..., event_log: ..., experiment: ..., onnxruntime: ...}  # AppArgs
      deployments:
      - name: Retriever
        user_config: {models: {main: artifacts/two-tower/v1}}     # ModelsConfig
      - name: Ranker
        user_config: {models: {main: artifacts/sasrec/v1}}

Changing only a `user_config` (a new artifact version) reconfigures the running replicas in
place: the hot model update. `ray` is recstack's own top-level section (Ray's schema ignores
unknown top-level keys, so `serve run` still reads the file).
"""

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from recstack.errors import RecstackError
from recstack.item_index import Method
from recstack.serving.experiments import Experiment
from recstack.serving.model_watch import ModelsFrom
from recstack.serving.rate_limit import parse_limit
from recstack.serving.store.guard import GuardSettings

RETRIEVER, RANKER, INGRESS = "Retriever", "Ranker", "Ingress"
# Ray's ServeDeploySchema fields (tests check the list against the installed Ray; importing
# Ray here would load it into every uvicorn worker) and recstack's own `ray` section
TOP_LEVEL_KEYS = {
    "applications",
    "controller_options",
    "grpc_options",
    "http_options",
    "logging_config",
    "proxy_location",
    "target_capacity",
    "tracing_config",
    "ray",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Threads = Annotated[int, Field(ge=1, le=256)] | Literal["auto"]  # "auto": sized to the machine


class OnnxRuntimeSettings(Strict):
    """onnxruntime in each replica or worker. auto: the replica's CPUs (Ray's num_cpus,
    rounded down, at least 1), or cores / workers on the uvicorn engine."""

    intra_op_threads: Threads = "auto"
    spinning: bool = False  # off where replicas share cores (a spinning thread steals them)


class RateLimit(Strict):
    per_key: str  # "100/second", "6000/minute": per replica or worker process

    @field_validator("per_key")
    @classmethod
    def _a_rate(cls, value: str) -> str:
        try:
            parse_limit(value)
        except RecstackError as exc:
            raise ValueError(str(exc)) from None
        return value


class AppArgs(Strict):
    store: dict[str, Any] = Field(
        default_factory=lambda: {"kind": "embedded", "path": "runs/serve/state.sqlite"}
    )
    event_log: Path = Path("runs/serve/events")
    seed_histories_from: Path | None = None  # a prepared dataset dir: initial user histories
    experiment: Experiment | None = None
    default_model: str = "main"
    retrieve_n: int = Field(100, ge=1, le=10_000)
    history_limit: int = Field(200, ge=1, le=10_000)
    # colocated (default, the fast path): retriever and ranker inside each Ingress replica
    # (models in the Ingress's user_config as {retriever: {models, index}, ranker: {models}});
    # split: Ingress -> Retriever -> Ranker deployments (models in their user_config), for
    # scaling the sides apart (e.g. a GPU ranker).
    pipeline: Literal["split", "colocated"] = "colocated"
    onnxruntime: OnnxRuntimeSettings = Field(default_factory=OnnxRuntimeSettings)
    rate_limit: RateLimit | None = None  # calls per API key (serving/rate_limit.py); none: off
    # Which models a replica loads at start when the config and a spec published by
    # POST /v1/admin/models disagree (serving/model_watch.py). last_published (default): the
    # latest change wins. An admin swap outlives restarts while the config's models stay as
    # they were when it was published, and an edit of the config's models after it wins; so
    # a restart never undoes the last change, and every replica, including ones Ray restarts
    # or adds later, serves the same models. config: the config's models serve after every
    # start (a replica that starts replaces an earlier publication for all replicas);
    # publications made while running still swap models until then.
    models_from: ModelsFrom = "last_published"
    # bounds on the request path's store calls: timeout, deadline, circuit (store/guard.py)
    store_guard: GuardSettings = Field(default_factory=GuardSettings)


class RaySettings(Strict):
    """How `recstack serve` starts Ray's processes (serving/ray_runtime.py turns this into the
    environment they read at start). Defaults: the fast path on one machine."""

    # haproxy: HAProxy in front, each Ingress replica serves HTTP itself (direct ingress);
    # python: Ray's Python proxy actor (the only choice where HAProxy cannot run)
    proxy: Literal["haproxy", "python"] = "haproxy"
    haproxy_threads: Threads = "auto"
    # handle calls over gRPC, user code on the replica's main loop, GC frozen after start
    throughput_optimized: bool = True
    # no Ray metrics export, no per-request HAProxy metric lines, a slower controller loop:
    # background work a small node cannot spare
    lean: bool = True
    # niceness of Ray's worker processes, the replicas among them. Ray's default, 15, lets
    # every other process on the node (a log shipper, a load client, a batch job) take the
    # replicas' CPU first; 0 runs them at the priority of the raylet and of a uvicorn worker
    worker_niceness: int = Field(0, ge=0, le=19)
    # seconds an Ingress replica keeps serving after it is told to stop (Ray's default, 30 s,
    # is for cloud load balancers; HAProxy on the node drops a replica within a second)
    drain_s: float = Field(2.0, ge=0.0, le=600.0)
    # any other variable for Ray's processes, verbatim (RAY_SERVE_*, RAY_<core setting>)
    env: dict[Annotated[str, StringConstraints(pattern=r"^RAY_\w+$")], str] = Field(
        default_factory=dict
    )


class ModelsConfig(Strict):
    models: dict[str, str] = Field(min_length=1)  # model set name -> artifact dir
    index: Method = "auto"  # auto: the artifact's ANN index when it has one | exact | ann
    max_batch_size: int = Field(32, ge=1, le=1024)  # @serve.batch: concurrent calls per ONNX run
    batch_wait_timeout_s: float = Field(0.0005, ge=0.0, le=1.0)  # wait for a batch to fill


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def parse_args(args: dict) -> AppArgs:
    try:
        return AppArgs.model_validate(args or {})
    except ValidationError as exc:
        raise RecstackError(f"serve config applications[0].args: {_problems(exc)}") from None


def parse_models(config: dict, deployment: str) -> ModelsConfig:
    try:
        return ModelsConfig.model_validate(config or {})
    except ValidationError as exc:
        raise RecstackError(f"serve config {deployment}.user_config: {_problems(exc)}") from None


def read_serve_config(path: Path) -> dict:
    """The YAML's single application entry, checked: args and both deployments' models."""
    try:
        document = yaml.safe_load(Path(path).read_text())
        app = document["applications"][0]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise RecstackError(
            f"{path} is not a Ray Serve config with one application: {exc}"
        ) from None
    unknown = sorted(set(document) - TOP_LEVEL_KEYS)
    if unknown:
        raise RecstackError(
            f"{path}: unknown top-level keys {unknown}; a serve config has {sorted(TOP_LEVEL_KEYS)}"
        )
    args = parse_args(app.get("args"))
    ray_settings = _section(RaySettings, document.get("ray"), "ray")
    deployments = {d.get("name"): d for d in app.get("deployments", [])}
    models = pipeline_models(args, deployments)
    for name, side in models.items():
        if args.experiment:
            args.experiment.check_models(side.models)
        if args.default_model not in side.models:
            raise RecstackError(
                f"{path}: the {name} declares no model {args.default_model!r} (default_model)"
            )
    return {
        "document": document,
        "app": app,
        "args": args,
        "deployments": deployments,
        "models": models,
        "ray": ray_settings,
    }


def _section(model: type[Strict], value, name: str):
    try:
        return model.model_validate(value or {})
    except ValidationError as exc:
        raise RecstackError(f"serve config {name}: {_problems(exc)}") from None


def pipeline_models(args: AppArgs, deployments: dict) -> dict[str, ModelsConfig]:
    """{"retriever": ..., "ranker": ...} from wherever this pipeline keeps them."""
    if args.pipeline == "split":
        return {
            side: parse_models(deployments.get(name, {}).get("user_config"), name)
            for side, name in (("retriever", RETRIEVER), ("ranker", RANKER))
        }
    user_config = deployments.get(INGRESS, {}).get("user_config")
    if user_config is None and {RETRIEVER, RANKER} & set(deployments):
        raise RecstackError(
            "serve config: the models are in Retriever / Ranker deployments, so set "
            "`pipeline: split` in applications[0].args (the default pipeline, colocated, "
            "reads them from the Ingress's user_config: {retriever: ..., ranker: ...})"
        )
    return colocated_models(user_config)


def colocated_models(user_config: dict | None) -> dict[str, ModelsConfig]:
    """The Ingress's user_config in a colocated pipeline -> both sides' models."""
    user_config = user_config or {}
    unknown = sorted(set(user_config) - {"retriever", "ranker"})
    if unknown:
        raise RecstackError(f"serve config Ingress.user_config: unknown keys {unknown}")
    return {
        side: parse_models(user_config.get(side), f"{INGRESS}.{side}")
        for side in ("retriever", "ranker")
    }
