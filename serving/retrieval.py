"""Candidate retrieval: a user's history and context -> the top-N items of one artifact.

Ids in and out are external item ids (strings); the artifact's vocab maps them, so a retriever
and a ranker exported on the same dataset agree on what an id means (checked by /readyz).
Unknown history ids are dropped and counted (`unknown_items`).
"""

from dataclasses import dataclass
from pathlib import Path

from recstack.serving.artifact import Artifact, load_artifact
from recstack.serving.item_index import ItemIndex, Method
from recstack.serving.query import encode


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


class Retriever:
    def __init__(self, artifact: Artifact, method: Method = "auto") -> None:
        self.artifact = artifact
        self.index = ItemIndex(artifact.item_embeddings, method)

    @classmethod
    def load(cls, path: Path, method: Method = "auto") -> "Retriever":
        return cls(load_artifact(path), method)

    def retrieve(self, requests: list[RetrievalRequest]) -> list[Candidates]:
        """One ONNX call and one matmul for the whole batch."""
        catalog = self.artifact.catalog
        histories, unknown = zip(*(catalog.to_idx(r.history) for r in requests), strict=True)
        queries = encode(
            self.artifact,
            list(histories),
            [r.context for r in requests],
            [r.user_id for r in requests],
        )  # [B, d]
        exclude = [
            set(h) | set(catalog.to_idx(r.exclude)[0])
            for h, r in zip(histories, requests, strict=True)
        ]
        idx, scores = self.index.search(queries, max(r.n for r in requests), exclude)
        out = []
        for row, request in enumerate(requests):
            keep = idx[row, : request.n] > 0
            if self.artifact.kind == "sasrec" and not histories[row]:
                keep[:] = False  # SASRec reads no state from an empty history: cold start
            out.append(
                Candidates(
                    item_ids=[catalog.item_ids[i] for i in idx[row, : request.n][keep]],
                    scores=scores[row, : request.n][keep].tolist(),
                    unknown_items=unknown[row],
                    model_version=self.artifact.version,
                )
            )
        return out
