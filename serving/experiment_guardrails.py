"""Guardrails of the A/B report per arm, read from the service's Prometheus exposition text
(docs/architecture.md §8, "Experiments"): p99 recommend latency and the fallback share.

- `recstack_recommend_seconds{arm}` (histogram): p99 by linear interpolation inside the bucket
  that holds the rank, as Prometheus' `histogram_quantile` does: the lowest bucket starts at
  0, and a rank in the +Inf bucket gives the highest finite bound.
- `recstack_recommendations_total{arm,fallback}` (counter): the share of responses whose
  fallback is not "none" (the popularity control arm answers with fallback "none": it is the
  arm's design, not a fallback).
Series with the same arm and other labels (replicas, processes) are summed.
"""

import math
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

LATENCY = "recstack_recommend_seconds"
RECOMMENDATIONS = "recstack_recommendations"
QUANTILE = 0.99


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of cumulative `buckets` {upper bound (le): count}; None without
    observations or without the +Inf bucket."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf or buckets[math.inf] <= 0:
        return None
    counts = [buckets[b] for b in bounds]
    rank = q * counts[-1]
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(bounds) - 1:  # in the +Inf bucket
        return bounds[-2] if len(bounds) > 1 else None
    upper, count = bounds[index], counts[index]
    if index == 0 and upper <= 0:
        return upper
    lower, below = (0.0, 0.0) if index == 0 else (bounds[index - 1], counts[index - 1])
    if count == below:
        return upper
    return lower + (upper - lower) * (rank - below) / (count - below)


def parse_guardrails(text: str | bytes) -> dict[str, dict]:
    """{arm: {"p99_latency_s", "fallback_share", "recommendations"}} from exposition text.

    Raises ValueError when the text is not the Prometheus text format.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    served: dict[str, dict[bool, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            arm = sample.labels.get("arm")
            if arm is None:
                continue
            if family.name == LATENCY and sample.name == f"{LATENCY}_bucket":
                buckets[arm][float(sample.labels["le"])] += sample.value
            elif family.name == RECOMMENDATIONS and sample.name == f"{RECOMMENDATIONS}_total":
                served[arm][sample.labels.get("fallback", "none") != "none"] += sample.value
    out = {}
    for arm in sorted(set(buckets) | set(served)):
        total = served[arm][True] + served[arm][False] if arm in served else 0.0
        out[arm] = {
            "p99_latency_s": histogram_quantile(QUANTILE, buckets[arm]) if arm in buckets else None,
            "fallback_share": served[arm][True] / total if total else None,
            "recommendations": int(total),
        }
    return out


def guardrails(text: str | bytes | None, source: str | None = None) -> dict:
    """The report's guardrails block: {"available", "source", "note", "arms"}; unavailable
    (with the reason) when there is no text or it does not parse."""
    if text is None:
        return {"available": False, "source": source, "note": "no metrics given", "arms": {}}
    try:
        arms = parse_guardrails(text)
    except (ValueError, KeyError, IndexError) as exc:
        note = f"not Prometheus text: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        return {"available": False, "source": source, "note": note[:200], "arms": {}}
    note = None if arms else "no recommend metrics by arm yet (no recommendations served)"
    return {"available": True, "source": source, "note": note, "arms": arms}
