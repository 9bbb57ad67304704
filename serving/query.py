"""Histories (+ request context) -> query vectors, through an artifact's ONNX model.

    encode(artifact, histories, contexts, user_ids) -> float32 [B, d]

Histories are item_idx lists, oldest first; only the last `max_length` items are read. The
batch is right-padded with PAD_IDX to its longest history (the export's contract). Two-tower
inputs follow the artifact's features.json: hour / weekday from the context's `ts` (seconds,
UTC; the server's clock when absent), vocab fields by value (unknown -> code 0), and the user's
attribute codes from user_features.parquet (unknown users -> 0).
"""

import time

import numpy as np

from recstack.schema import PAD_IDX
from recstack.serving.artifact import Artifact

_SECONDS_PER_DAY = 86_400


def pad_histories(histories: list[list[int]], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """-> items int64 [B, L] right-padded with PAD_IDX, lengths int64 [B]."""
    tails = [h[-max_length:] for h in histories]
    lengths = np.array([len(t) for t in tails], dtype=np.int64)
    items = np.full((len(tails), max(1, int(lengths.max(initial=0)))), PAD_IDX, dtype=np.int64)
    for row, tail in enumerate(tails):
        items[row, : len(tail)] = tail
    return items, lengths


def _context_code(spec: dict, context: dict) -> int:
    kind = spec["kind"]
    if kind in ("hour_of_day", "weekday"):
        ts = context.get("ts")
        ts = int(time.time()) if not isinstance(ts, int | float) else int(ts)
        if kind == "hour_of_day":
            return (ts % _SECONDS_PER_DAY) // 3600 + 1
        return ((ts // _SECONDS_PER_DAY) + 3) % 7 + 1  # 1970-01-01 was a Thursday; Monday = 1
    if kind == "vocab":
        value = context.get(spec["name"])
        text = str(value).lower() if isinstance(value, bool) else str(value)
        values = spec["values"]
        return values.index(text) + 1 if value is not None and text in values else 0
    if kind == "buckets":
        value = context.get(spec["name"])
        if not isinstance(value, int | float):
            return 0
        return int(np.searchsorted(np.asarray(spec["edges"]), value, side="right")) + 1
    raise ValueError(f"unknown feature kind {kind!r} in features.json")


def _two_tower_inputs(
    artifact: Artifact, contexts: list[dict], user_ids: list[str | None]
) -> dict[str, np.ndarray]:
    features = artifact.features or {}
    context_specs, user_specs = features.get("context", []), features.get("user", [])
    inputs = {}
    if "context" in artifact.input_names:
        inputs["context"] = np.array(
            [[_context_code(s, c) for s in context_specs] for c in contexts], dtype=np.int64
        ).reshape(len(contexts), len(context_specs))
    if "user" in artifact.input_names:
        unknown = np.zeros(len(user_specs), dtype=np.int64)
        codes = artifact.user_codes or {}
        inputs["user"] = np.stack([codes.get(u, unknown) if u else unknown for u in user_ids])
    return inputs


def encode(
    artifact: Artifact,
    histories: list[list[int]],
    contexts: list[dict] | None = None,
    user_ids: list[str | None] | None = None,
) -> np.ndarray:
    """-> query vectors float32 [B, d]. SASRec needs >= 1 history item per row."""
    batch = len(histories)
    items, lengths = pad_histories(histories, artifact.max_length)
    if artifact.kind == "sasrec":
        feeds = {"items": items, "lengths": np.maximum(lengths, 1)}
    else:
        feeds = {"history": items, "lengths": lengths}
        feeds |= _two_tower_inputs(artifact, contexts or [{}] * batch, user_ids or [None] * batch)
    return artifact.session.run([artifact.output_name], feeds)[0]
