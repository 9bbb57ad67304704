"""The recstack part of a Serve config YAML: `applications[0].args` (`AppArgs`), and the models
of the Retriever / Ranker deployments (their `user_config`, `ModelsConfig`).

    applications:
    - name: recstack
      import_path: recstack.serving.app:build_app
      args: {store: ..., event_log: ..., experiment: ...}          # AppArgs
      deployments:
      - name: Retriever
        user_config: {models: {main: artifacts/two-tower/v1}}     # ModelsConfig
      - name: Ranker
        user_config: {models: {main: artifacts/sasrec/v1}}

Changing only a `user_config` (a new artifact version) reconfigures the running replicas in
place: the hot model update.
"""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recstack.errors import RecstackError
from recstack.serving.experiments import Experiment
from recstack.serving.item_index import Method

RETRIEVER, RANKER, INGRESS = "Retriever", "Ranker", "Ingress"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    # split: Ingress -> Retriever -> Ranker deployments (models in their user_config);
    # colocated: retriever and ranker inside each Ingress replica (models in the Ingress's
    # user_config as {retriever: {models, index}, ranker: {models}}): no handle hops.
    pipeline: Literal["split", "colocated"] = "split"


class ModelsConfig(Strict):
    models: dict[str, str] = Field(min_length=1)  # model set name -> artifact dir
    index: Method = "auto"  # retrieval search: exact | hnsw | auto (by catalogue size)
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
    args = parse_args(app.get("args"))
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
    }


def pipeline_models(args: AppArgs, deployments: dict) -> dict[str, ModelsConfig]:
    """{"retriever": ..., "ranker": ...} from wherever this pipeline keeps them."""
    if args.pipeline == "split":
        return {
            side: parse_models(deployments.get(name, {}).get("user_config"), name)
            for side, name in (("retriever", RETRIEVER), ("ranker", RANKER))
        }
    return colocated_models(deployments.get(INGRESS, {}).get("user_config"))


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
