"""A/B experiments: arms declared in the serve config, hash assignment, CTR report per arm.

Assignment is deterministic and stateless: `sha256(f"{salt}:{user_id}")`, its first 8 bytes read
as a big-endian uint64 `h`, and `h / 2**64` bucketed by the arms' cumulative normalised
weights. Any process (any language) that repeats this gets the same arm; changing the salt
reshuffles every user. The thresholds are integers computed once per experiment.

The report counts impressions and clicks per arm (events carry the arm they were served
under), gives CTR with a 95 % Wilson score interval, and compares every arm with the control
(the first popularity arm, else the first arm): absolute CTR difference with a 95 % CI and a
two-sided p-value (two-proportion z-test, unpooled standard error).
"""

import bisect
import hashlib
import itertools
import math
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Literal, Self

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recstack.errors import RecstackError

CONFIDENCE = 0.95
_SCALE = 2**64  # uint64 range: h / 2**64 is in [0, 1)
REQUIRED_COLUMNS = ("user_id", "type", "arm")


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


# --- report -------------------------------------------------------------------------------


def wilson_interval(successes: int, trials: int) -> list[float] | None:
    """95 % Wilson score interval of a proportion (scipy), or None without trials."""
    from scipy.stats import binomtest

    if trials == 0 or successes > trials:
        return None
    ci = binomtest(successes, trials).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return [float(ci.low), float(ci.high)]


def difference_vs_control(clicks: int, impressions: int, control: dict) -> dict | None:
    """CTR(arm) - CTR(control) with a 95 % CI and two-sided p-value (unpooled z-test).

    None when either side has no impressions or more clicks than impressions; the CI and
    p-value are None when the standard error is 0 (both CTRs 0 or 1).
    """
    from scipy.stats import norm

    n1, n0 = impressions, control["impressions"]
    if n1 == 0 or n0 == 0 or clicks > n1 or control["clicks"] > n0:
        return None
    p1, p0 = clicks / n1, control["clicks"] / n0
    diff = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    if se == 0:
        return {"diff": diff, "ci": None, "p_value": None}
    z = float(norm.ppf(0.5 + CONFIDENCE / 2))
    return {
        "diff": diff,
        "ci": [diff - z * se, diff + z * se],
        "p_value": float(2 * norm.sf(abs(diff) / se)),
    }


def _counts(events: pa.Table) -> dict:
    """impressions, clicks, distinct users (with any event) and events of one arm's rows."""
    types = events["type"]
    return {
        "impressions": int(pc.sum(pc.equal(types, "impression")).as_py() or 0),
        "clicks": int(pc.sum(pc.equal(types, "click")).as_py() or 0),
        "users": int(pc.count_distinct(events["user_id"]).as_py()),
        "events": events.num_rows,
    }


def experiment_report(
    events: pa.Table, experiment: Experiment | None = None, control: str | None = None
) -> dict:
    """CTR per arm with Wilson CIs, and every arm vs the control.

    events: a table with at least user_id, type ("impression", "click", …) and arm (str or
    null). Arms declared in `experiment` come first (zeros when they have no events), then
    any other arm in the log (`declared: False`). The control is `control` if given, else
    the experiment's control, else (no experiment) the first arm by name. Events without an
    arm are counted under "unassigned", outside the comparison.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in events.column_names]
    if missing:
        raise RecstackError(
            f"event table lacks columns {missing} (has {events.column_names}); "
            "pass an event log written by recstack serving"
        )
    events = events.select(list(REQUIRED_COLUMNS)).cast(
        pa.schema([(c, pa.string()) for c in REQUIRED_COLUMNS])
    )
    assigned = pc.is_valid(events["arm"])
    declared = {arm.name: arm for arm in experiment.arms} if experiment else {}
    logged = sorted(set(pc.unique(events["arm"]).drop_null().to_pylist()) - set(declared))
    arms: dict[str, dict] = {}
    for name in [*declared, *logged]:
        rows = events.filter(pc.equal(events["arm"], name))
        counts = _counts(rows)
        ctr = counts["clicks"] / counts["impressions"] if counts["impressions"] else None
        arms[name] = {
            "kind": declared[name].kind if name in declared else None,
            "model": declared[name].model if name in declared else None,
            "weight": declared[name].weight if name in declared else None,
            "declared": name in declared,
            **counts,
            "ctr": ctr,
            "ctr_ci": wilson_interval(counts["clicks"], counts["impressions"]),
        }
    if control is None and arms:
        control = experiment.control.name if experiment else next(iter(arms))
    if control is not None and control not in arms:
        raise RecstackError(f"control arm {control!r} is neither declared nor in the log")
    for name, stats in arms.items():
        stats["vs_control"] = (
            None
            if name == control
            else difference_vs_control(stats["clicks"], stats["impressions"], arms[control])
        )
    return {
        "experiment": experiment.name if experiment else None,
        "confidence": CONFIDENCE,
        "control": control,
        "events": events.num_rows,
        "arms": arms,
        "unassigned": _counts(events.filter(pc.invert(assigned))),
    }
