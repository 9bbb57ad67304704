"""Candidate retrieval: a user's history and context -> the top-N items of one artifact.

Ids in and out are external item ids (strings); the artifact's vocab maps them, so a retriever
and a ranker exported on the same dataset agree on what an id means (checked by /readyz).
Unknown history ids are dropped and counted (`unknown_items`).

The search (`index` of the serve config): `auto` uses the artifact's ANN index when it has one
built for retrieval (a two-tower export with `--ann`), exact search otherwise; `ann` requires
that index; `exact` never reads it. A SASRec artifact's index serves similar items (cosine), not
retrieval. A SASRec artifact with the transition term adds each history's bonus: its listed
items join the searched ones and all are re-scored. With exact search that is exact, since a
bonus is >= 0: an item in neither list scores at most the n-th searched one.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recstack.artifact import Artifact, load_artifact
from recstack.artifact_manifest import ModelKind
from recstack.errors import DataError, RecstackError
from recstack.item_index import METHODS, AnnIndex, ItemIndex, Method
from recstack.query import Bonus, check_scores, encode_scoring
from recstack.schema import PAD_IDX

KINDS = (ModelKind.TWO_TOWER, ModelKind.SASREC)  # query vectors that score the whole catalogue


@dataclass
class RetrievalRequest:
    history: list[str]  # item ids, oldest first
    context: dict
    user_id: str | None
    exclude: list[str]
    n: int


@dataclass
class Candidates:
    item_ids: list[str]  # best first
    scores: list[float]
    unknown_items: int  # history ids not in the vocab
    model_version: str


def retrieval_ann(artifact: Artifact, method: Method) -> AnnIndex | None:
    """The ANN index `method` asks for, loaded and re-checked; None for exact search."""
    if method not in METHODS:
        raise RecstackError(f"retrieval index must be one of {METHODS}, got {method!r}")
    spec = artifact.manifest.ann
    usable = spec is not None and spec.metric == "inner_product"
    if method == "ann" and not usable:
        what = "has no ANN index" if spec is None else "has a similar-items (cosine) index only"
        raise DataError(
            f"{artifact.path} {what} for `index: ann`; re-export the two-tower run with "
            "`recstack export --ann on` or serve it with `index: auto`"
        )
    if method == "exact" or not usable:
        return None
    return AnnIndex.load(artifact.path, spec.model_dump(), artifact.item_embeddings)


class Retriever:
    def __init__(self, artifact: Artifact, method: Method = "auto") -> None:
        self.artifact = artifact
        self.index = ItemIndex(artifact.item_embeddings, retrieval_ann(artifact, method))

    @classmethod
    def load(cls, path: Path, method: Method = "auto") -> "Retriever":
        artifact = load_artifact(path, KINDS)
        check_scores(artifact)
        return cls(artifact, method)

    def retrieve(self, requests: list[RetrievalRequest]) -> list[Candidates]:
        """One ONNX call and one search (matmul or ANN) for the whole batch."""
        catalog = self.artifact.catalog
        histories, unknown = zip(*(catalog.to_idx(r.history) for r in requests), strict=True)
        queries, bonus = encode_scoring(
            self.artifact,
            list(histories),
            [r.context for r in requests],
            [r.user_id for r in requests],
        )  # [B, d]
        exclude = [
            set(h) | set(catalog.to_idx(r.exclude)[0])
            for h, r in zip(histories, requests, strict=True)
        ]
        n = max(r.n for r in requests)
        idx, scores = self.index.search(queries, n, exclude)
        if bonus is not None:
            idx, scores = self._with_bonus(queries, idx, bonus, exclude, n)
        out = []
        for row, request in enumerate(requests):
            keep = idx[row, : request.n] > 0
            if self.artifact.kind == ModelKind.SASREC and not histories[row]:
                keep[:] = False  # SASRec reads no state from an empty history: cold start
            out.append(
                Candidates(
                    item_ids=[catalog.item_ids[i] for i in idx[row, : request.n][keep].tolist()],
                    scores=scores[row, : request.n][keep].tolist(),
                    unknown_items=unknown[row],
                    model_version=self.artifact.version,
                )
            )
        return out

    def _with_bonus(
        self, queries: np.ndarray, idx: np.ndarray, bonus: Bonus, exclude: list[set[int]], n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The searched items [B, n] and each row's bonus items, re-scored with the bonus ->
        the best n per row (item_idx -1 and score -inf where fewer), best first."""
        out_idx = np.full((len(queries), n), -1, dtype=np.int64)
        out_scores = np.full((len(queries), n), -np.inf, dtype=np.float32)
        n_known = len(self.artifact.item_embeddings)
        for row, query in enumerate(queries):
            listed = [int(i) for i in bonus.items[row] if 0 < i < n_known and i not in exclude[row]]
            cands = np.unique(np.concatenate([idx[row][idx[row] > PAD_IDX], listed])).astype(
                np.int64
            )
            cand_scores = self.artifact.item_embeddings[cands] @ query + bonus.of(row, cands)
            best = np.argsort(-cand_scores, kind="stable")[:n]
            out_idx[row, : len(best)], out_scores[row, : len(best)] = cands[best], cand_scores[best]
        return out_idx, out_scores
