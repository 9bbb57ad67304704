"""The search space of a study, read from YAML (configs/search/*.yaml), never from code.

    sampler: {kind: tpe, seed: 0, n_startup_trials: 6}   # tpe | random, + the sampler's options
    pruner: {kind: median, n_warmup_steps: 5}            # median | hyperband | percentile | none
    fixed:                                               # set in every trial (the budget)
      trainer.max_epochs: 40
    params:                                              # sampled, in this order
      model.optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.model.n_layers: {type: int, low: 1, high: 3}
      model.loss.kind: {type: categorical, choices: [ce, sampled]}
      model.loss.n_negatives: {type: int, low: 64, high: 1024, log: true,
                               if: {model.loss.kind: [sampled]}}

Keys are the dotted paths of `recstack train` flags (`model.optim.lr` is
`--model.optim.lr`). A param with `if` is sampled only when an earlier param took one of
the listed values, so conditional spaces stay define-by-run.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from recstack.errors import RecstackError, first_line

SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}
_SECTIONS = {"sampler", "pruner", "fixed", "params"}
_PARAM_KEYS = {
    "float": {"low", "high", "log", "step"},
    "int": {"low", "high", "log", "step"},
    "categorical": {"choices"},
}


@dataclass
class Param:
    name: str
    distribution: BaseDistribution
    condition: dict[str, list] = field(default_factory=dict)  # earlier param -> allowed values

    def active(self, sampled: dict[str, Any]) -> bool:
        return all(sampled.get(key) in values for key, values in self.condition.items())

    def suggest(self, trial: optuna.Trial) -> Any:
        d = self.distribution
        if isinstance(d, FloatDistribution):
            return trial.suggest_float(self.name, d.low, d.high, log=d.log, step=d.step)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.name, d.low, d.high, log=d.log, step=d.step)
        return trial.suggest_categorical(self.name, d.choices)

    def contains(self, value: Any) -> bool:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return value in d.choices
        return isinstance(value, int | float) and d.low <= value <= d.high


@dataclass
class SearchSpace:
    params: list[Param]
    fixed: dict[str, Any]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    source: dict[str, Any]  # the YAML as read (stored with the study)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample this trial's values (inactive conditional params are left out)."""
        sampled: dict[str, Any] = {}
        for param in self.params:
            if param.active(sampled):
                sampled[param.name] = param.suggest(trial)
        return sampled

    def values_of(self, config_values: dict[str, Any]) -> dict[str, Any]:
        """The params' values in a config (to enqueue it as a trial); out-of-space ones are
        left for the sampler."""
        values: dict[str, Any] = {}
        for param in self.params:
            value = config_values.get(param.name)
            if param.active(values) and param.contains(value):
                values[param.name] = value
        return values

    def make_sampler(self, seed: int | None) -> optuna.samplers.BaseSampler:
        options = dict(self.sampler)
        kind = options.pop("kind", "tpe")
        options.pop("seed", None)
        if kind == "tpe":  # parallel workers: pretend running trials scored badly
            options.setdefault("constant_liar", True)
        return _build("sampler", SAMPLERS, kind, options | {"seed": seed})

    def make_pruner(self) -> optuna.pruners.BasePruner:
        options = dict(self.pruner)
        return _build("pruner", PRUNERS, options.pop("kind", "median"), options)


def _build(section: str, kinds: dict, kind: str, options: dict):
    if kind not in kinds:
        raise RecstackError(f"search {section}.kind {kind!r} is not one of {sorted(kinds)}")
    try:
        return kinds[kind](**options)
    except (TypeError, ValueError) as exc:
        raise RecstackError(f"search {section} {kind}: {first_line(exc)}") from None


def _distribution(name: str, spec: dict) -> BaseDistribution:
    kind = spec.get("type")
    if kind not in _PARAM_KEYS:
        raise RecstackError(
            f"search param {name}: type must be one of {sorted(_PARAM_KEYS)}, got {kind!r}"
        )
    options = {k: v for k, v in spec.items() if k not in ("type", "if")}
    unknown = sorted(set(options) - _PARAM_KEYS[kind])
    if unknown:
        raise RecstackError(
            f"search param {name}: unknown keys {unknown} for type {kind} "
            f"(allowed: {sorted(_PARAM_KEYS[kind])})"
        )
    try:
        if kind == "categorical":
            return CategoricalDistribution(list(options["choices"]))
        cls = FloatDistribution if kind == "float" else IntDistribution
        if kind == "float":
            options = {k: float(v) if k in ("low", "high") else v for k, v in options.items()}
        return cls(**options)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecstackError(f"search param {name}: {first_line(exc)}") from None


def _condition(name: str, spec: Any, earlier: list[str]) -> dict[str, list]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise RecstackError(f"search param {name}: `if` must map an earlier param to values")
    condition = {}
    for key, values in spec.items():
        if key not in earlier:
            raise RecstackError(
                f"search param {name}: `if` refers to {key!r}, which is not a param listed "
                "before it"
            )
        condition[key] = values if isinstance(values, list) else [values]
    return condition


def load_search_space(path: Path) -> SearchSpace:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RecstackError(f"cannot read search space {path}: {first_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise RecstackError(f"search space {path} is not valid YAML: {first_line(exc)}") from None
    if not isinstance(raw, dict) or not raw.get("params"):
        raise RecstackError(f"search space {path} needs a `params:` mapping of distributions")
    unknown = sorted(set(raw) - _SECTIONS)
    if unknown:
        raise RecstackError(f"search space {path}: unknown sections {unknown}; use {_SECTIONS}")
    params: list[Param] = []
    for name, spec in raw["params"].items():
        if not isinstance(spec, dict):
            raise RecstackError(f"search param {name}: expected a mapping with `type`")
        condition = _condition(name, spec.get("if"), [p.name for p in params])
        params.append(Param(name, _distribution(name, spec), condition))
    sections = {key: raw.get(key) or {} for key in ("fixed", "sampler", "pruner")}
    for key, value in sections.items():
        if not isinstance(value, dict):
            raise RecstackError(f"search space {path}: `{key}` must be a mapping")
    overlap = sorted(set(sections["fixed"]) & {p.name for p in params})
    if overlap:
        raise RecstackError(f"search space {path}: {overlap} are both fixed and searched")
    space = SearchSpace(params, source=raw, **sections)
    space.make_pruner()  # fail now on a bad pruner, not in the first trial
    space.make_sampler(0)
    return space
