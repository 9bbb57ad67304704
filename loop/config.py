"""The retrain loop's YAML (configs/loop/*.yaml), checked in one place (docs/architecture.md §9).

The serve config stays the one source for what the service does: its event log, its
`default_model`, `retrieve_n` and `history_limit`, and the dataset it seeds histories from
(the serving models' dataset until the loop promotes one of its own). The loop config adds
where the service answers, how to train, and the gate.
"""

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator

from recstack.errors import RecstackError
from recstack.loop.monitor_config import MonitorConfig, read_monitor_config, window_seconds
from recstack.serving.config import read_serve_config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SideTraining(_Strict):
    config: Path  # a `recstack train` config (its data.dataset and run_dir are replaced)
    max_epochs: int | None = Field(None, ge=1)  # default: the config's
    args: list[str] = []  # more `recstack train` flags, e.g. ["--model.init_args.optim.lr", "3e-4"]


class Training(_Strict):
    warm_start: bool = True  # from the serving checkpoints (new item rows start fresh)
    ranker: SideTraining
    retriever: SideTraining


class Gate(_Strict):
    # new >= old - tolerance; a negative tolerance demands a gain of at least its size
    ndcg_tolerance: float = Field(0.0, ge=-1, le=1)  # pipeline NDCG@k
    recall_tolerance: float = Field(0.0, ge=-1, le=1)  # retrieval recall@N (N = retrieve_n)
    k: int = Field(10, ge=1)
    latency_budget_ms: float = Field(50.0, gt=0)  # p99 of one retrieve + rank on the artifact
    latency_requests: int = Field(200, ge=10)


class Promotion(_Strict):
    timeout_s: float = Field(60.0, gt=0)  # every replica swaps within this, or roll back
    request_timeout_s: float = Field(30.0, gt=0)
    # publish a model that passed the gate under this model name instead (a serve-config model
    # that an experiment arm sends a share of traffic to); `--promote-canary` makes it the
    # default model later
    canary_model: str | None = None


class Trigger(_Strict):
    # a `recstack monitor` config (configs/monitor/): retrain only when one of its thresholds
    # is breached on the serving model's artifact and dataset (loop/monitor.py)
    monitor: Path
    window: str | None = None  # default: the monitor config's

    @field_validator("window")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                window_seconds(value)
            except RecstackError as exc:
                raise ValueError(str(exc)) from None
        return value


class LoopConfig(_Strict):
    loop_dir: Path  # runs, dataset versions, artifacts, audit.jsonl
    serve_config: Path  # the running service's config
    service: HttpUrl  # where its admin API answers
    key_env: str = "RECSTACK_MODELS_KEY"  # environment variable holding a models-scope key
    base_dataset: Path | None = None  # default: the serve config's seed_histories_from
    feedback: str | None = None  # `recstack data extend --feedback`
    min_new_events: int = Field(1, ge=1)  # fewer new events: nothing to do
    holdout_since: int | None = None  # judge on targets after this ts; default the data cut-off
    train: Training
    gate: Gate = Gate()
    promote: Promotion = Promotion()
    trigger: Trigger | None = None  # none: every run retrains when there are new events


class Loop:
    """A checked loop config with what it takes from the serve config."""

    def __init__(self, config: LoopConfig, path: Path) -> None:
        serve = read_serve_config(config.serve_config)
        args = serve["args"]
        base = config.base_dataset or args.seed_histories_from
        if base is None:
            raise RecstackError(
                f"{path}: set base_dataset (the serving models' dataset); the serve config "
                "has no seed_histories_from"
            )
        for side in (config.train.ranker, config.train.retriever):
            if not side.config.is_file():
                raise RecstackError(f"{path}: train config {side.config} does not exist")
        self.config, self.path = config, path
        self.dir = config.loop_dir
        self.events: Path = args.event_log
        self.model: str = args.default_model
        self.retrieve_n: int = args.retrieve_n
        self.history_limit: int = args.history_limit
        self.base_dataset: Path = Path(base)
        self.service = str(config.service).rstrip("/")
        self.canary: str | None = config.promote.canary_model
        self.monitor: MonitorConfig | None = None
        if config.trigger is not None:
            self.monitor = read_monitor_config(config.trigger.monitor)
        if self.canary is not None:
            _check_canary(self.canary, self.model, serve, path)

    def key(self) -> str:
        key = os.environ.get(self.config.key_env, "")
        if not key:
            raise RecstackError(
                f"set {self.config.key_env} to an API key with the models scope (the loop "
                "reads and publishes the service's models)"
            )
        return key


def _check_canary(canary: str, model: str, serve: dict, path: Path) -> None:
    """The canary model must be served on both sides and get traffic from an arm."""
    experiment = serve["args"].experiment
    arms = [arm.name for arm in (experiment.arms if experiment else []) if arm.model == canary]
    sides = [side for side, models in serve["models"].items() if canary not in models.models]
    if canary == model or sides or not arms:
        raise RecstackError(
            f"{path}: promote.canary_model {canary!r} must be a model of the serve config other "
            f"than {model!r}, on both sides, with an experiment arm (missing on {sides}, arms "
            f"{arms})"
        )


def read_loop_config(path: Path) -> Loop:
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RecstackError(f"loop config {path}: {exc}") from None
    try:
        config = LoopConfig.model_validate(document or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RecstackError(f"loop config {path}: {problems}") from None
    return Loop(config, Path(path))
