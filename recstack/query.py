"""Histories (+ request context) -> query vectors, through an artifact's ONNX model.

    encode(artifact, histories, contexts, user_ids) -> float32 [B, d]

Histories are item_idx lists, oldest first; only the last `history_len` items are read. The
batch is right-padded with PAD_IDX to its longest history (the export's contract). Two-tower
inputs follow the artifact's features.json, coded by `recstack.feature_codes.encode` (the rules
export checked against training): hour / weekday from the context's `ts` (seconds, UTC; the
server's clock when absent), vocab fields by value (unknown -> code 0), and the user's
attribute codes from user_features.parquet (unknown users -> 0).
"""

import time

import numpy as np

from recstack import feature_codes
from recstack.artifact import Artifact
from recstack.artifact_manifest import ModelKind
from recstack.errors import DataError
from recstack.schema import PAD_IDX


def pad_histories(histories: list[list[int]], history_len: int) -> tuple[np.ndarray, np.ndarray]:
    """-> items int64 [B, L] right-padded with PAD_IDX, lengths int64 [B]."""
    tails = [h[-history_len:] for h in histories]
    lengths = np.array([len(t) for t in tails], dtype=np.int64)
    items = np.full((len(tails), max(1, int(lengths.max(initial=0)))), PAD_IDX, dtype=np.int64)
    for row, tail in enumerate(tails):
        items[row, : len(tail)] = tail
    return items, lengths


def _raw(spec: dict, contexts: list[dict], now: int) -> list:
    """A context field's raw value per request; hour/weekday read `ts` (now when absent)."""
    if spec["kind"] in feature_codes.TS_KINDS:
        return [int(c["ts"]) if isinstance(c.get("ts"), int | float) else now for c in contexts]
    return [c.get(spec["name"]) for c in contexts]


def _two_tower_inputs(
    artifact: Artifact, contexts: list[dict], user_ids: list[str | None]
) -> dict[str, np.ndarray]:
    features = artifact.features or {}
    context_specs, user_specs = features.get("context", []), features.get("user", [])
    inputs = {}
    if "context" in artifact.input_names:
        now = int(time.time())
        columns = [feature_codes.encode(s, _raw(s, contexts, now)) for s in context_specs]
        inputs["context"] = np.stack(columns, axis=1)  # [B, C]; the export omits C == 0
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
    items, lengths = pad_histories(histories, artifact.history_len)
    if artifact.kind == ModelKind.SASREC:
        feeds = {"items": items, "lengths": np.maximum(lengths, 1)}
    else:
        feeds = {"history": items, "lengths": lengths}
        feeds |= _two_tower_inputs(artifact, contexts or [{}] * batch, user_ids or [None] * batch)
    return artifact.session.run([artifact.output_name], feeds)[0]


def check_scores(artifact: Artifact) -> None:
    """Run the model once on sample inputs (the most popular items as a history; for the
    two-tower also a user with none): the query vectors and their scores over the whole
    catalogue must be finite, or the artifact may not serve (DataError)."""
    popular = np.argsort(-artifact.catalog.popularity[1:], kind="stable") + 1
    histories = [popular[: artifact.history_len][::-1].tolist(), popular[:1].tolist()]
    if artifact.kind == ModelKind.TWO_TOWER:
        histories.append([])
    try:
        queries = encode(artifact, histories)
    except Exception as exc:
        raise DataError(
            f"{artifact.path}: the model fails on sample inputs ({exc}); re-export the artifact"
        ) from None
    if queries.shape != (len(histories), artifact.dim):
        raise DataError(
            f"{artifact.path}: the model returns {queries.shape} for {len(histories)} sample "
            f"histories, not [{len(histories)}, {artifact.dim}]; re-export the artifact"
        )
    if not (np.isfinite(queries).all() and np.isfinite(queries @ artifact.item_embeddings.T).all()):
        raise DataError(
            f"{artifact.path}: the model gives NaN or infinite scores on sample inputs; "
            "re-train or re-export it"
        )
