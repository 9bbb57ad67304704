"""A/B experiments: arms declared in the serve config and hash assignment.

Assignment is deterministic and stateless: `sha256(f"{salt}:{user_id}")`, its first 8 bytes read
as a big-endian uint64 `h`, and `h / 2**64` bucketed by the arms' cumulative normalised
weights. Any process (any language) that repeats this gets the same arm; changing the salt
reshuffles every user. The thresholds are integers computed once per experiment.

The report (attribution by request_id, user-level intervals, SRM, guardrails) is
serving/experiment_report.py.
"""

import bisect
import hashlib
import itertools
import math
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recstack.errors import RecstackError

_SCALE = 2**64  # uint64 range: h / 2**64 is in [0, 1)


class Arm(BaseModel):
    """One arm: a model set (`kind="model"`, `model` names it) or the popularity control."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    kind: Literal["model", "popularity"]
    model: str | None = Field(default=None, min_length=1)
    weight: float = Field(gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _model_matches_kind(self) -> Self:
        if self.kind == "model" and self.model is None:
            raise ValueError(
                f"arm {self.name!r} has kind 'model' but no `model`: name one of the model "
                "sets declared in the serve config"
            )
        if self.kind == "popularity" and self.model is not None:
            raise ValueError(
                f"arm {self.name!r} has kind 'popularity' and must not name a model "
                f"(got model={self.model!r}); remove `model` or use kind 'model'"
            )
        return self


class Experiment(BaseModel):
    """An experiment: a salt and ≥ 1 arms with unique names; weights are normalised to sum 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    salt: str = Field(min_length=1)
    arms: list[Arm]

    @model_validator(mode="after")
    def _normalise(self) -> Self:
        if not self.arms:
            raise ValueError(f"experiment {self.name!r} declares no arms: add at least one")
        names = [arm.name for arm in self.arms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"experiment {self.name!r}: arm names must be unique: {duplicates}")
        total = math.fsum(arm.weight for arm in self.arms)
        arms = [arm.model_copy(update={"weight": arm.weight / total}) for arm in self.arms]
        object.__setattr__(self, "arms", arms)  # frozen model: replace once, while validating
        return self

    @cached_property
    def thresholds(self) -> tuple[int, ...]:
        """Arm i takes the users whose hash h is below thresholds[i] (and not a lower arm)."""
        cumulative = list(itertools.accumulate(arm.weight for arm in self.arms))
        return (*(round(c * _SCALE) for c in cumulative[:-1]), _SCALE)

    @property
    def control(self) -> Arm:
        """The arm others are compared with: the first popularity arm, else the first arm."""
        return next((arm for arm in self.arms if arm.kind == "popularity"), self.arms[0])

    def check_models(self, available: Iterable[str]) -> None:
        """Raise RecstackError if an arm names a model set that the serve config lacks."""
        known = set(available)
        missing = [arm for arm in self.arms if arm.model is not None and arm.model not in known]
        if missing:
            wanted = ", ".join(f"{arm.name!r} → {arm.model!r}" for arm in missing)
            raise RecstackError(
                f"experiment {self.name!r}: arms name unknown model sets ({wanted}); "
                f"declared model sets: {sorted(known)}"
            )


def bucket_hash(salt: str, user_id: str) -> int:
    """The first 8 bytes of sha256(f"{salt}:{user_id}") as a big-endian uint64."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def assign(experiment: Experiment, user_id: str) -> Arm:
    """The arm `user_id` is in: deterministic, about 1 µs (one sha256, one bisect)."""
    index = bisect.bisect_right(experiment.thresholds, bucket_hash(experiment.salt, user_id))
    return experiment.arms[index]


def load_experiment(config: Path) -> Experiment:
    """The experiment at `applications[0].args.experiment` of a Ray Serve config YAML."""
    import yaml

    try:
        document = yaml.safe_load(Path(config).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RecstackError(f"cannot read serve config {config}: {exc}") from exc
    try:
        raw = document["applications"][0]["args"]["experiment"]
    except (KeyError, IndexError, TypeError):
        raise RecstackError(
            f"{config} has no experiment at applications[0].args.experiment; "
            "declare one there (name, salt, arms)"
        ) from None
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'experiment'}: {err['msg']}"
            for err in exc.errors()
        )
        raise RecstackError(f"{config}: invalid experiment: {problems}") from None
