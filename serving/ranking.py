"""Ranking: score a user's candidates with a SASRec artifact (the only kind a ranker takes).

    score(item) = state(history) . embedding[item]      state: the ONNX model's [B, d] output
                  + the transition term's bonus, when the artifact has one (recstack/query.py)

With `explain`, each returned item carries the history item whose embedding is closest to it
(cosine), with its title: "because you watched X". The popularity ranking (control arm and
fallbacks) lives here too, because it needs the same catalogue. Similar items use the
artifact's cosine ANN index when the export built one (`recstack export --ann`), exact cosine
otherwise.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recstack.artifact import Artifact, load_artifact
from recstack.artifact_manifest import ModelKind
from recstack.item_index import AnnIndex, ItemIndex, unit_rows
from recstack.query import check_scores, encode_scoring
from recstack.schema import PAD_IDX

KINDS = (ModelKind.SASREC,)  # ranks by the order of a history; the two-tower is a retriever
POPULAR_REASON = {"kind": "popular", "text": "popular now"}


@dataclass
class RankRequest:
    history: list[str]  # item ids, oldest first (must contain a known item)
    candidates: list[str]
    k: int
    explain: bool = False


@dataclass
class Ranked:
    item_ids: list[str]
    scores: list[float]
    reasons: list[dict] | None
    model_version: str
    titles: list[str] = field(default_factory=list)
    popularity: float = 0.0  # mean popularity percentile of the items (1 = the most popular)
    catalogue_size: int = 0  # items the model knows (served-list coverage, metrics.py)


class Ranker:
    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.unit = unit_rows(artifact.item_embeddings)  # [n_items + 1, d]: cosine = dot
        spec = artifact.manifest.ann
        cosine = spec is not None and spec.metric == "cosine"
        ann = AnnIndex.load(artifact.path, spec.model_dump(), self.unit) if cosine else None
        self.similar_index = ItemIndex(self.unit, ann)
        self.popular_order = np.argsort(-artifact.catalog.popularity[1:], kind="stable") + 1
        n_items = len(self.popular_order)
        self.percentile = np.zeros(n_items + 1, dtype=np.float32)  # by item_idx; 0 at PAD
        self.percentile[self.popular_order] = 1 - np.arange(n_items) / max(n_items - 1, 1)

    @classmethod
    def load(cls, path: Path) -> "Ranker":
        artifact = load_artifact(path, KINDS)
        check_scores(artifact)
        return cls(artifact)

    def _reasons(self, history: list[int], items: np.ndarray) -> list[dict]:
        catalog = self.artifact.catalog
        if not history:
            return [dict(POPULAR_REASON) for _ in items]
        similarity = self.unit[items] @ self.unit[history].T  # [k, H]
        best = similarity.argmax(axis=1)
        return [
            {
                "kind": "similar_to_history",
                "because_of": catalog.item_ids[history[j]],
                "title": catalog.titles[history[j]],
                "similarity": round(float(similarity[row, j]), 4),
            }
            for row, j in enumerate(best)
        ]

    def _ranked(self, idx, scores, reasons) -> Ranked:
        catalog = self.artifact.catalog
        return Ranked(
            item_ids=[catalog.item_ids[i] for i in idx.tolist()],
            scores=np.asarray(scores, dtype=np.float64).tolist(),
            reasons=reasons,
            model_version=self.artifact.version,
            titles=[catalog.titles[i] for i in idx.tolist()],
            popularity=float(self.percentile[idx].mean()) if len(idx) else 0.0,
            catalogue_size=len(self.popular_order),
        )

    def rank(self, requests: list[RankRequest]) -> list[Ranked]:
        """One ONNX call for the batch; each row keeps its k best candidates."""
        catalog, window = self.artifact.catalog, self.artifact.history_len
        histories = [  # explanations may point at any history item; the model reads the window
            catalog.to_idx(r.history)[0] if r.explain else catalog.last_known(r.history, window)
            for r in requests
        ]
        states, bonus = encode_scoring(self.artifact, histories)  # [B, d]
        out = []
        for row, request in enumerate(requests):
            cands = np.array(catalog.to_idx(request.candidates)[0], dtype=np.int64)  # [N]
            scores = self.artifact.item_embeddings[cands] @ states[row]  # [N]
            if bonus is not None:
                scores = scores + bonus.of(row, cands)
            order = np.argsort(-scores, kind="stable")[: request.k]
            reasons = self._reasons(histories[row], cands[order]) if request.explain else None
            out.append(self._ranked(cands[order], scores[order], reasons))
        return out

    def popular(self, k: int, exclude: list[str], explain: bool = False) -> Ranked:
        """The k most popular items (events over the training log) not in `exclude`."""
        skip = set(self.artifact.catalog.to_idx(exclude)[0])
        idx = [int(i) for i in self.popular_order[: k + len(skip)] if int(i) not in skip][:k]
        scores = self.artifact.catalog.popularity[idx]
        reasons = [dict(POPULAR_REASON) for _ in idx] if explain else None
        return self._ranked(np.array(idx, dtype=np.int64), scores, reasons)

    def similar(self, item_id: str, k: int) -> Ranked | None:
        """Items closest to `item_id` by embedding cosine; None for an unknown id."""
        idx = self.artifact.catalog.index.get(item_id)
        if idx is None:
            return None
        top, scores = self.similar_index.search(self.unit[idx][None, :], k, [{idx}])  # [1, k]
        keep = top[0] > PAD_IDX
        return self._ranked(top[0][keep], scores[0][keep], None)
