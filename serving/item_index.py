"""Top-N items for query vectors: exact inner product or a FAISS HNSW index.

    ItemIndex(embeddings [n_items + 1, d], method).search(queries [B, d], n, exclude) ->
        (item_idx int64 [B, n], scores float32 [B, n]), best first

`exact` is a matmul + argpartition (fast up to ~10^5 items on a CPU); `hnsw` is FAISS's
graph index for large catalogues (approximate; over-fetches to make room for exclusions);
`auto` picks exact below `EXACT_MAX_ITEMS`. PAD_IDX and each row's excluded items never come
back; when fewer than n items remain the row is padded with item_idx -1 and score -inf.
"""

from typing import Literal

import numpy as np

from recstack.errors import RecstackError
from recstack.schema import PAD_IDX

Method = Literal["auto", "exact", "hnsw"]
EXACT_MAX_ITEMS = 100_000
HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 128


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """scores [B, N] -> the n best columns per row, best first."""
    n = min(n, scores.shape[1])
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


class ItemIndex:
    def __init__(self, embeddings: np.ndarray, method: Method = "auto") -> None:
        if method not in ("auto", "exact", "hnsw"):
            raise RecstackError(f"retrieval index must be auto, exact or hnsw, got {method!r}")
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        n_items = self.embeddings.shape[0] - 1
        self.method = (
            ("exact" if n_items <= EXACT_MAX_ITEMS else "hnsw") if method == "auto" else method
        )
        self._faiss = self._build_hnsw() if self.method == "hnsw" else None

    def _build_hnsw(self):
        import faiss  # only large catalogues need it

        index = faiss.IndexHNSWFlat(
            self.embeddings.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT
        )
        index.hnsw.efSearch = HNSW_EF_SEARCH
        index.add(self.embeddings)
        return index

    def search(
        self, queries: np.ndarray, n: int, exclude: list[set[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        exclude = exclude or [set()] * len(queries)
        if self._faiss is None:
            scores = queries.astype(np.float32) @ self.embeddings.T  # [B, n_items + 1]
            scores[:, PAD_IDX] = -np.inf
            for row, items in enumerate(exclude):
                if items:
                    scores[row, list(items)] = -np.inf
            idx, top = top_n(scores, n)
            return np.where(np.isfinite(top), idx, -1), top
        return self._search_hnsw(queries, n, exclude)

    def _search_hnsw(self, queries, n, exclude) -> tuple[np.ndarray, np.ndarray]:
        fetch = n + 1 + max(len(e) for e in exclude)
        scores, idx = self._faiss.search(np.ascontiguousarray(queries, dtype=np.float32), fetch)
        out_idx = np.full((len(queries), n), -1, dtype=np.int64)
        out_scores = np.full((len(queries), n), -np.inf, dtype=np.float32)
        for row, items in enumerate(exclude):
            keep = [
                (i, s)
                for i, s in zip(idx[row], scores[row], strict=True)
                if i > PAD_IDX and i not in items
            ]
            keep = keep[:n]
            out_idx[row, : len(keep)] = [i for i, _ in keep]
            out_scores[row, : len(keep)] = [s for _, s in keep]
        return out_idx, out_scores
