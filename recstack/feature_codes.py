"""The two-tower artifact's feature-code rules: raw request values -> the user tower's codes.

Part of the artifact contract (features.json), so both sides use this one implementation:
`recstack export` checks it against training's encoders before writing an artifact, and the
server (`recstack/query.py`) builds the user tower's `context` and `user` inputs with it.
The bucket edges of numeric attributes (AGE_EDGES) live here too: training's encoders and the
evaluation's user segments cut ages the same way. numpy only: no torch, no polars.
"""

import itertools
from collections.abc import Sequence

import numpy as np

from recstack.errors import RecstackError

HOUR_OF_DAY, WEEKDAY_KIND, VOCAB, BUCKETS = "hour_of_day", "weekday", "vocab", "buckets"
UNTIMED = "untimed"  # hour/weekday of a model whose data had ordinal times (§3): always 0
TS_KINDS = (HOUR_OF_DAY, WEEKDAY_KIND, UNTIMED)  # from the request time, not a named value
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # ML-1M age codes 1, 18, 25, 35, 45, 50, 56
_DAY = 86_400


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """Labels of the len(edges) + 1 buckets cut at `edges`: "<e0", "e0-(e1-1)", ..., "eN+"."""
    labels = [f"<{edges[0]}"]
    labels += [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    return [*labels, f"{edges[-1]}+"]


def bucketize(values: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """[N] bucket index of each value: 0 below edges[0], i for edges[i-1] <= v < edges[i]."""
    return np.searchsorted(np.asarray(edges), values, side="right")


def _text(value) -> str | None:
    """How a vocab value is compared: ints in decimal, booleans 'true'/'false'."""
    if value is None:
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


def encode(entry: dict, values) -> np.ndarray:
    """A features.json entry's rule: raw values [N] (ts for hour/weekday) -> codes int64 [N].

    0 = unknown or missing: a vocab value not listed, a non-number for buckets.
    """
    kind = entry["kind"]
    if kind == UNTIMED:  # trained on sequence positions: no clock to read, code 0 (unknown)
        return np.zeros(len(values), dtype=np.int64)
    if kind in TS_KINDS:
        ts = np.asarray(values, dtype=np.int64)
        return (ts % _DAY) // 3600 + 1 if kind == HOUR_OF_DAY else ((ts // _DAY) + 3) % 7 + 1
    if kind == VOCAB:
        index = {value: i + 1 for i, value in enumerate(entry["values"])}
        return np.array([index.get(_text(v), 0) for v in values], dtype=np.int64)
    if kind == BUCKETS:
        v = np.array([x if isinstance(x, int | float) else np.nan for x in values], np.float64)
        codes = bucketize(v, entry["edges"]) + 1
        return np.where(np.isnan(v), 0, codes).astype(np.int64)
    raise RecstackError(f"unknown feature kind {kind!r} in {entry}")
