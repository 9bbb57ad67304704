"""`recstack monitor`'s YAML (configs/monitor/*.yaml): the window and the thresholds, checked in
one place (docs/architecture.md §9).

A threshold left out takes its default; `null` turns the check off (the figure is still
reported). Every check but `coverage_min` and `ctr_min` is breached above its threshold.
"""

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recstack.errors import RecstackError, first_line

_DURATION = re.compile(r"^([1-9][0-9]*)([dhms])$")
_UNIT_S = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}

Share = float | None


def window_seconds(text: str) -> int:
    """'1d', '6h', '30m', '90s' -> seconds; RecstackError otherwise."""
    match = _DURATION.match(str(text).strip())
    if not match:
        raise RecstackError(
            f"window {text!r} is not a duration; write a whole number and a unit: 1d, 6h, 30m"
        )
    return int(match.group(1)) * _UNIT_S[match.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Strict):
    # input drift: the window's interactions vs the training data (recstack/data_profile.py)
    item_popularity_psi: float | None = Field(0.2, ge=0)
    item_popularity_js: float | None = Field(None, ge=0, le=1)  # Jensen-Shannon distance, base 2
    user_activity_psi: float | None = Field(0.2, ge=0)
    user_activity_js: float | None = Field(None, ge=0, le=1)
    unknown_item_share: Share = Field(0.05, ge=0, le=1)  # of interaction events
    unknown_user_share: Share = Field(0.3, ge=0, le=1)  # of the window's users
    new_items: int | None = Field(None, ge=0)  # distinct items without an embedding
    # output drift: the window's impressions
    coverage_min: Share = Field(None, ge=0, le=1)  # share of the catalogue impressed
    popularity_lift_max: float | None = None  # served vs training popularity, relative
    score_psi: float | None = Field(0.2, ge=0)  # per arm, vs the window before
    # online
    ctr_min: Share = Field(None, ge=0, le=1)  # per arm with at least min_impressions


class MonitorConfig(_Strict):
    window: str = "1d"  # up to the newest event (or --until)
    min_events: int = Field(200, ge=1)  # fewer interactions: input drift shown, not judged
    min_impressions: int = Field(200, ge=1)  # the same for output drift, scores and CTR
    top_new_items: int = Field(10, ge=0)  # new items listed, most events first
    thresholds: Thresholds = Thresholds()

    @field_validator("window")
    @classmethod
    def _duration(cls, value: str) -> str:
        try:
            window_seconds(value)
        except RecstackError as exc:
            raise ValueError(str(exc)) from None
        return value


def read_monitor_config(path: Path | None) -> MonitorConfig:
    """The checked config at `path`, or the defaults when None."""
    if path is None:
        return MonitorConfig()
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise RecstackError(f"cannot read monitor config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise RecstackError(f"monitor config {path} is not valid YAML: {problem}{where}") from None
    if document is not None and not isinstance(document, dict):
        raise RecstackError(f"monitor config {path}: expected a mapping of keys, not a list")
    try:
        return MonitorConfig.model_validate(document or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RecstackError(f"monitor config {path}: {problems}") from None
