"""Top-N items for query vectors: exact inner product, or the artifact's FAISS ANN index.

    ItemIndex(vectors [n_items + 1, d], ann).search(queries [B, d], n, exclude) ->
        (item_idx int64 [B, n], scores float32 [B, n]), best first

`exact` (ann None) is a matmul + argpartition: fast up to ~10^5 items on a CPU. Larger
catalogues get a FAISS index at export (`recstack export --ann`, built by
training/export/ann_index.py: IVF-SQ8, or a flat 4-bit PQ fast-scan when the vectors have too
little cluster structure for IVF); serving never builds one. `AnnIndex.load` reads it and
re-checks it: recall@100 of the search against exact search, on the sample queries saved beside
it, must match the manifest's figure, so an index that belongs to other vectors is refused. The
ANN path over-fetches to make room for exclusions, and by the index's `refine` factor: it
fetches refine × n candidates, re-scores them with the exact vectors and keeps the best n.
PAD_IDX and each row's excluded items never come back; when fewer than n items remain the row
is padded with item_idx -1 and score -inf. The scores are always exact.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from recstack.errors import DataError, RecstackError, first_line
from recstack.schema import PAD_IDX

Method = Literal["auto", "exact", "ann"]  # auto: the artifact's ANN index when it has one
METHODS = ("auto", "exact", "ann")
EXACT_MAX_ITEMS = 100_000  # `recstack export --ann auto` builds an ANN index above this
RECALL_AT = 100  # recall@100 of the ANN index against exact search
RECALL_TOLERANCE = 0.02  # load refuses an index this far below the manifest's recall (or
# below its target): the same queries on the same index give the same recall, so a lower one
# means the index does not belong to these vectors
EXACT_CHUNK = 32  # queries per exact-search matmul: a [32, n_items] block of scores

_search_threads = 1  # OpenMP threads of one FAISS search; see use_search_threads


def use_search_threads(n: int) -> None:
    """Threads of each FAISS search this process runs from now on (default 1).

    Call it at replica start with the replica's CPU count. OpenMP keeps the thread count per
    calling thread, so every search applies it again in the thread that runs it.
    """
    global _search_threads
    if n < 1:
        raise RecstackError(f"search threads must be >= 1, got {n}")
    _search_threads = int(n)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero): cosine = dot product of unit rows."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """scores [B, N] -> the n best columns per row, best first."""
    n = min(n, scores.shape[1])
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def recall_k(n_items: int) -> int:
    """The k of the ANN recall check: RECALL_AT, or every item of a smaller catalogue."""
    return min(RECALL_AT, n_items)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """item_idx [Q, k] of the k best items 1..n_items per query by inner product, in no
    particular order (the ground truth of the recall check)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), EXACT_CHUNK):
        scores = queries[start : start + EXACT_CHUNK] @ vectors[PAD_IDX + 1 :].T  # [C, n_items]
        out[start : start + EXACT_CHUNK] = np.argpartition(scores, -k, axis=1)[:, -k:] + 1
    return out


def _row_keys(ids: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """(row, id) pairs as one int64 each, so that np.isin compares them row by row."""
    return rows * width + ids + 1  # + 1: id -1 (none) stays >= 0


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of each row of `truth` [Q, k] that the same row of `found` [Q, k'] holds."""
    width = int(max(found.max(initial=0), truth.max(initial=0))) + 2
    rows = np.arange(len(truth))[:, None]
    hits = np.isin(_row_keys(truth, rows, width), _row_keys(found, rows, width))
    return float(hits.mean()) if hits.size else 1.0


IVF_KINDS = ("faiss_ivf_sq8", "faiss_ivf_flat")  # faiss_ivf_flat: earlier exports
PQ_KIND = "faiss_pq_fastscan"


@dataclass
class AnnIndex:
    """A FAISS index over items 1..n_items, loaded from an artifact: IVF (FAISS ids =
    item_idx) or a flat PQ fast-scan (FAISS ids = item_idx - 1, shifted back by `search`).

    spec: the manifest's "ann" block (written by training/export/ann_index.py).
    recall: recall@100 this process measured at load, on the saved sample queries.
    refine: candidates fetched per wanted item, re-scored exactly (1: none beyond n).
    """

    index: object  # faiss.IndexIVF or faiss.IndexPQFastScan
    spec: dict
    recall: float
    refine: int = 1

    @classmethod
    def load(cls, directory: Path, spec: dict, vectors: np.ndarray) -> "AnnIndex":
        """Read the index `spec` names and check it against `vectors` [n_items + 1, d], the
        rows it must index (row PAD unused); DataError says what is wrong, in one line."""
        try:
            path, queries_path = directory / spec["file"], directory / spec["queries_file"]
            kind, expected = str(spec["kind"]), float(spec["recall_at_100"])
            target, refine = float(spec["target_recall"]), int(spec.get("refine") or 1)
            nprobe = int(spec["nprobe"]) if kind in IVF_KINDS else None
        except KeyError as exc:
            raise DataError(
                f"{directory}/manifest.json: the ann block lacks {exc}; re-export the artifact"
            ) from None
        except (TypeError, ValueError):
            raise DataError(
                f"{directory}/manifest.json: the ann block's values do not fit its kind "
                f"{spec.get('kind')!r}; re-export the artifact"
            ) from None
        index = _read_index(path, kind)
        n_items, dim = vectors.shape[0] - 1, vectors.shape[1]
        if (index.d, index.ntotal) != (dim, n_items):
            raise DataError(
                f"{path} indexes {index.ntotal} vectors of dim {index.d}, the artifact has "
                f"{n_items} items of dim {dim}: it belongs to another artifact; re-export"
            )
        queries = _read_queries(queries_path, dim)
        if nprobe is not None:
            index.nprobe = nprobe
        ann = cls(index=index, spec=spec, recall=0.0, refine=max(refine, 1))
        ann.recall = ann.measured_recall(vectors, queries)
        if ann.recall < max(expected - RECALL_TOLERANCE, target):
            k = recall_k(n_items)
            raise DataError(
                f"{path}: recall@{k} {ann.recall:.3f} on its {len(queries)} sample queries, "
                f"the manifest says {expected:.3f} (target {target}): the index does not match "
                "this artifact's item vectors; re-export the artifact"
            )
        return ann

    def measured_recall(
        self, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray | None = None
    ) -> float:
        """recall@100 of serving's search through this index (refinement included) against
        exact search (`truth`, exact_top's answer, when already known), over `queries`: what
        export records and load re-checks."""
        k = recall_k(vectors.shape[0] - 1)
        truth = exact_top(vectors, queries, k) if truth is None else truth
        return recall(ItemIndex(vectors, self).search(queries, k)[0], truth)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (item_idx int64 [B, k], -1 where none; approximate scores float32 [B, k]),
        best first."""
        import faiss

        faiss.omp_set_num_threads(_search_threads)  # per calling thread (see above)
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        if isinstance(self.index, faiss.IndexPQFastScan):  # sequential ids 0..n-1
            ids = np.where(ids >= 0, ids + 1, -1)
        return ids, scores


def _read_index(path: Path, kind: str):
    import faiss  # only artifacts with an ANN index need it

    if not path.is_file():
        raise DataError(f"{path} is missing: the artifact's ANN index; re-export the artifact")
    try:
        # read into memory: searching memory-mapped (on-disk) inverted lists measured 2x slower
        index = faiss.read_index(str(path))
    except Exception as exc:  # FAISS: RuntimeError("Error in <C++ function> at <file>: why")
        why = first_line(exc).rpartition(": ")[2] if " at " in str(exc) else first_line(exc)
        raise DataError(
            f"{path} is not a readable FAISS index ({why}); re-export the artifact"
        ) from None
    if kind not in (*IVF_KINDS, PQ_KIND):
        raise DataError(f"{path}: unknown ANN index kind {kind!r}; re-export the artifact")
    wanted = faiss.IndexPQFastScan if kind == PQ_KIND else faiss.IndexIVF
    if not isinstance(index, wanted) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise DataError(f"{path} is not an inner-product {kind} index; re-export the artifact")
    return index


def _read_queries(path: Path, dim: int) -> np.ndarray:
    try:
        queries = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({first_line(exc)}); re-export the artifact") from None
    shape_ok = queries.ndim == 2 and len(queries) > 0 and queries.shape[1] == dim
    if not (shape_ok and queries.dtype.kind == "f" and np.isfinite(queries).all()):
        raise DataError(
            f"{path} holds {queries.shape} {queries.dtype}, not finite [n, {dim}] sample "
            "queries; re-export the artifact"
        )
    return queries.astype(np.float32)


def _keep_allowed(idx: np.ndarray, exclude: list[set[int]], n: int) -> np.ndarray:
    """The first n ids per row that are real items (> PAD) and not excluded in that row, in
    their order; -1 fills a short row. A Python filter per row: a few hundred set lookups cost
    less than numpy's set operations at serving's batch sizes."""
    out = np.full((len(idx), n), -1, dtype=np.int64)
    for row, (found, banned) in enumerate(zip(idx.tolist(), exclude, strict=True)):
        kept = [i for i in found if i > PAD_IDX and i not in banned][:n]
        out[row, : len(kept)] = kept
    return out


class ItemIndex:
    """Top-N search over item vectors: the ANN index when given one, exact otherwise."""

    def __init__(self, vectors: np.ndarray, ann: AnnIndex | None = None) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ann = ann

    @property
    def method(self) -> str:
        return "exact" if self.ann is None else "ann"

    def search(
        self, queries: np.ndarray, n: int, exclude: list[set[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        exclude = exclude or [set()] * len(queries)
        if self.ann is not None:
            wanted = n * self.ann.refine
            fetch = wanted + max(len(items) for items in exclude)
            idx, _ = self.ann.search(queries, fetch)  # quantised scores: rescored below
            idx, scores = self._rescored(queries, _keep_allowed(idx, exclude, wanted))
            return idx[:, :n], scores[:, :n]
        scores = queries.astype(np.float32) @ self.vectors.T  # [B, n_items + 1]
        scores[:, PAD_IDX] = -np.inf
        counts = [len(items) for items in exclude]
        rows = np.repeat(np.arange(len(exclude)), counts)
        scores[rows, np.fromiter((i for e in exclude for i in e), np.int64, sum(counts))] = -np.inf
        idx, top = top_n(scores, n)
        return np.where(np.isfinite(top), idx, -1), top

    def _rescored(self, queries, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ANN's finds with their exact inner products, best first (-1 rows stay last)."""
        found = idx >= 0
        rows = self.vectors[np.where(found, idx, PAD_IDX)]  # [B, n, d]
        scores = np.einsum("bnd,bd->bn", rows, queries.astype(np.float32))
        scores = np.where(found, scores, -np.inf).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(idx, order, axis=1), np.take_along_axis(scores, order, axis=1)
