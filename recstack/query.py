"""Histories (+ request context) -> query vectors, through an artifact's ONNX model.

    encode(artifact, histories, contexts, user_ids) -> float32 [B, d]
    encode_scoring(artifact, histories) -> (float32 [B, d], Bonus | None)

A SASRec artifact with the transition term also gives, per history, the items that followed
its last item in training and a logit bonus for each (`Bonus`): an item's score is then
query . embedding + its bonus (0 for the items not listed).

Histories are item_idx lists, oldest first; only the last `history_len` items are read. The
batch is right-padded with PAD_IDX to its longest history (the export's contract). Two-tower
inputs follow the artifact's features.json, coded by `recstack.feature_codes.encode` (the rules
export checked against training): hour / weekday from the context's `ts` (seconds, UTC; the
server's clock when absent), vocab fields by value (unknown -> code 0), and the user's
attribute codes from user_features.parquet (unknown users -> 0).
"""

import time
from dataclasses import dataclass

import numpy as np

from recstack import feature_codes
from recstack.artifact import Artifact
from recstack.artifact_manifest import TRANSITION_OUTPUTS, ModelKind
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


@dataclass
class Bonus:
    """SASRec's transition term for a batch: items int64 [B, k] (PAD_IDX: unused) and the
    logit each adds to its score, float32 [B, k] (>= 0)."""

    items: np.ndarray
    values: np.ndarray

    def add_to_all(self, scores: np.ndarray) -> np.ndarray:
        """scores [B, C] over item_idx 0..C-1 -> with the bonus added (in place)."""
        rows = np.repeat(np.arange(self.items.shape[0]), self.items.shape[1])
        items, values = self.items.ravel(), self.values.ravel()
        inside = (items > PAD_IDX) & (items < scores.shape[1])
        np.add.at(scores, (rows[inside], items[inside]), values[inside])
        return scores

    def of(self, row: int, items: np.ndarray) -> np.ndarray:
        """Row `row`'s bonus for item_idx [N] -> [N] (0 where none)."""
        match = items[:, None] == self.items[row][None, :]  # [N, k]
        return (match * self.values[row][None, :]).sum(axis=1)


def _feeds(artifact, histories, contexts, user_ids) -> dict[str, np.ndarray]:
    batch = len(histories)
    items, lengths = pad_histories(histories, artifact.history_len)
    if artifact.kind == ModelKind.SASREC:
        return {"items": items, "lengths": np.maximum(lengths, 1)}
    feeds = {"history": items, "lengths": lengths}
    return feeds | _two_tower_inputs(artifact, contexts or [{}] * batch, user_ids or [None] * batch)


def encode(
    artifact: Artifact,
    histories: list[list[int]],
    contexts: list[dict] | None = None,
    user_ids: list[str | None] | None = None,
) -> np.ndarray:
    """-> query vectors float32 [B, d]. SASRec needs >= 1 history item per row."""
    feeds = _feeds(artifact, histories, contexts, user_ids)
    return artifact.session.run([artifact.output_name], feeds)[0]


def encode_scoring(
    artifact: Artifact,
    histories: list[list[int]],
    contexts: list[dict] | None = None,
    user_ids: list[str | None] | None = None,
) -> tuple[np.ndarray, Bonus | None]:
    """-> (query vectors [B, d], the transition term's Bonus or None): all a score needs."""
    if not artifact.followers:
        return encode(artifact, histories, contexts, user_ids), None
    feeds = _feeds(artifact, histories, contexts, user_ids)
    queries, items, values = artifact.session.run(
        [artifact.output_name, *TRANSITION_OUTPUTS], feeds
    )
    return queries, Bonus(items.astype(np.int64), values.astype(np.float32))


def check_scores(artifact: Artifact) -> None:
    """Run the model once on sample inputs (the most popular items as a history; for the
    two-tower also a user with none): the query vectors and their scores over the whole
    catalogue must be finite, or the artifact may not serve (DataError)."""
    popular = np.argsort(-artifact.catalog.popularity[1:], kind="stable") + 1
    histories = [popular[: artifact.history_len][::-1].tolist(), popular[:1].tolist()]
    if artifact.kind == ModelKind.TWO_TOWER:
        histories.append([])
    try:
        queries, bonus = encode_scoring(artifact, histories)
    except Exception as exc:
        raise DataError(
            f"{artifact.path}: the model fails on sample inputs ({exc}); re-export the artifact"
        ) from None
    embeddings = artifact.item_embeddings
    if queries.shape != (len(histories), artifact.dim):
        raise DataError(
            f"{artifact.path}: the model returns {queries.shape} for {len(histories)} sample "
            f"histories, not [{len(histories)}, {artifact.dim}]; re-export the artifact"
        )
    finite_bonus = bonus is None or np.isfinite(bonus.values).all()
    if not (
        finite_bonus and np.isfinite(queries).all() and np.isfinite(queries @ embeddings.T).all()
    ):
        raise DataError(
            f"{artifact.path}: the model gives NaN or infinite scores on sample inputs; "
            "re-train or re-export it"
        )
