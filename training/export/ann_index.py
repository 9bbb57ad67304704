"""The artifact's ANN index, built at export so that no replica ever builds one.

    build_ann(vectors [n_items + 1, d], queries [Q, d], metric, nlist, out) -> the "ann" block

Two FAISS candidates over item rows 1..n_items, inner product (a cosine index holds unit rows):
- IVF-SQ8: nlist lists of 8-bit scalar-quantised residuals, k-means on up to TRAIN_PER_LIST
  vectors per list; the probe count is the smallest rung of NPROBE_LADDER whose recall reaches
  TARGET_RECALL. Fast when the vectors cluster (a trained two-tower's do).
- a flat 4-bit PQ fast-scan (d/2 sub-quantisers, then d): every item is scanned, in a
  sixteenth of float32's bytes, and serving re-scores `refine` × n candidates exactly
  (REFINE_LADDER, at most an eighth of the catalogue). It does not depend on cluster
  structure: on 1M barely trained SASRec vectors, where IVF reached 0.916 at 1,024 of 4,000
  lists, it reached 0.963 at refine 16 in 1.7 ms (benchmarks/results/large_catalogue.json).
Recall is recall@100 against exact search over the sample queries, through serving's own
search (recstack.item_index.ItemIndex: refinement and exact re-scoring included). Each
candidate that reaches the target is timed at batch 1 on one thread; the faster one is kept
(both figures go into the manifest's `tried`). When none does, the export fails. The index goes
to item_index.faiss and the queries to ann_queries.npy, so that serving re-measures the same
recall at load (`recstack.item_index.AnnIndex.load`).
"""

import math
import time
from pathlib import Path
from typing import Literal

import numpy as np

from recstack.errors import RecstackError
from recstack.item_index import (
    EXACT_MAX_ITEMS,
    PQ_KIND,
    AnnIndex,
    ItemIndex,
    exact_top,
    recall_k,
)

AnnMode = Literal["auto", "on", "off"]  # auto: an index above EXACT_MAX_ITEMS items
Metric = Literal["inner_product", "cosine"]  # cosine: inner product of unit rows
IVF_KIND = "faiss_ivf_sq8"
INDEX_FILE = "item_index.faiss"
QUERIES_FILE = "ann_queries.npy"
TARGET_RECALL = 0.95
NPROBE_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
REFINE_LADDER = (1, 2, 4, 8, 16, 32)
TRAIN_PER_LIST = 64  # k-means training vectors per list
MIN_PER_LIST = 39  # FAISS's own floor: fewer training vectors per list and k-means warns
PQ_TRAIN = 100_000  # PQ codebooks train on at most this many vectors
PQ_MIN_ITEMS = 16 * MIN_PER_LIST  # 16 centroids per sub-quantiser; smaller: IVF only
MAX_REFINED_SHARE = 8  # refinement re-scores at most 1/8 of the catalogue: beyond that the
# exact re-scoring, not the index, would be finding the items
TIMED_QUERIES = 64  # batch-1 searches timed per candidate
SEED = 0


def wants_ann(mode: AnnMode, n_items: int) -> bool:
    if mode not in ("auto", "on", "off"):
        raise RecstackError(f"--ann must be auto, on or off, got {mode!r}")
    return mode == "on" or (mode == "auto" and n_items > EXACT_MAX_ITEMS)


def default_nlist(n_items: int) -> int:
    """About 4 sqrt(n) lists, fewer when there are too few items to train them."""
    return max(1, min(round(4 * math.sqrt(n_items)), n_items // MIN_PER_LIST))


def _train_ivf(rows: np.ndarray, nlist: int):
    import faiss

    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(rows.shape[1]),
        rows.shape[1],
        nlist,
        faiss.ScalarQuantizer.QT_8bit,
        faiss.METRIC_INNER_PRODUCT,
    )
    n_train = min(len(rows), TRAIN_PER_LIST * nlist)
    index.cp.seed = SEED
    index.train(rows[_sample(len(rows), n_train)])
    index.add_with_ids(rows, np.arange(1, len(rows) + 1, dtype=np.int64))
    return index, n_train


def _train_pq(rows: np.ndarray, m: int):
    import faiss

    index = faiss.IndexPQFastScan(rows.shape[1], m, 4, faiss.METRIC_INNER_PRODUCT)
    n_train = min(len(rows), PQ_TRAIN)
    index.pq.cp.seed = SEED
    index.train(rows[_sample(len(rows), n_train)])
    index.add(rows)  # FAISS ids 0..n-1 = item_idx - 1
    return index, n_train


def _sample(n: int, size: int) -> np.ndarray:
    return np.sort(np.random.default_rng(SEED).choice(n, size, replace=False))


def _batch1_ms(ann: AnnIndex, vectors: np.ndarray, queries: np.ndarray) -> float:
    """Median ms of one serving search (top-100, one query, one thread)."""
    search, k = ItemIndex(vectors, ann), recall_k(vectors.shape[0] - 1)
    times = []
    for query in queries[:TIMED_QUERIES]:
        started = time.perf_counter()
        search.search(query[None, :], k)
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1e3, 3)


def _ivf(vectors, rows, queries, truth, nlist: int) -> dict:
    """IVF-SQ8 at the first rung of the probe ladder that reaches the target (or the last)."""
    index, n_train = _train_ivf(rows, nlist)
    ann, found = AnnIndex(index=index, spec={}, recall=0.0), {}
    for nprobe in (p for p in NPROBE_LADDER if p <= nlist):
        index.nprobe = nprobe
        found[f"nprobe {nprobe}"] = ann.measured_recall(vectors, queries, truth)
        if found[f"nprobe {nprobe}"] >= TARGET_RECALL:
            break
    setting = {"nlist": nlist, "nprobe": int(index.nprobe), "refine": 1}
    return _candidate(IVF_KIND, setting, ann, found, n_train, vectors, queries)


def _pq(vectors, rows, queries, truth) -> dict:
    """A flat PQ fast-scan at the first (sub-quantisers, refine) pair reaching the target."""
    dim, found, recall = vectors.shape[1], {}, 0.0
    k = recall_k(vectors.shape[0] - 1)
    max_candidates = max(k, (vectors.shape[0] - 1) // MAX_REFINED_SHARE)
    for m in (m for m in (dim // 2, dim) if m >= 1 and dim % m == 0):
        index, n_train = _train_pq(rows, m)
        ann = AnnIndex(index=index, spec={}, recall=0.0)
        for ann.refine in (r for r in REFINE_LADDER if r * k <= max_candidates):
            found[f"pq {m}x4 refine {ann.refine}"] = recall = ann.measured_recall(
                vectors, queries, truth
            )
            if recall >= TARGET_RECALL:
                break
        if recall >= TARGET_RECALL:
            break
    setting = {"pq_m": m, "refine": ann.refine}
    return _candidate(PQ_KIND, setting, ann, found, n_train, vectors, queries)


def _candidate(kind, setting, ann, found, n_train, vectors, queries) -> dict:
    best = list(found.values())[-1]  # the first setting at the target, or the last tried
    ms = _batch1_ms(ann, vectors, queries) if best >= TARGET_RECALL else None
    return {
        "kind": kind,
        **setting,
        "recall": best,
        "search_ms": ms,
        "recall_by_setting": found,
        "train_vectors": n_train,
        "ann": ann,
    }


def build_ann(
    vectors: np.ndarray,
    queries: np.ndarray,
    metric: Metric,
    nlist: int | None,
    out: Path,
    query_source: str,
) -> dict:
    """Build, check and write the index of `vectors` [n_items + 1, d] (row PAD unused; unit
    rows for cosine) into `out`; returns the manifest's "ann" block."""
    import faiss

    started = time.perf_counter()
    n_items = vectors.shape[0] - 1
    nlist = nlist or default_nlist(n_items)
    if not 1 <= nlist <= n_items:
        raise RecstackError(f"--ann_nlist must be in 1..{n_items} (the items), got {nlist}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = recall_k(n_items)
    truth = exact_top(vectors, queries, k)
    rows = np.ascontiguousarray(vectors[1:])  # items 1..n_items, what both indexes hold
    tried = [_ivf(vectors, rows, queries, truth, nlist)]
    if n_items >= PQ_MIN_ITEMS:
        tried.append(_pq(vectors, rows, queries, truth))
    good = [c for c in tried if c["search_ms"] is not None]
    if not good:
        summary = "; ".join(f"{c['kind']} {c['recall']:.3f}" for c in tried)
        raise RecstackError(
            f"no ANN index reaches recall@{k} {TARGET_RECALL} (best: {summary}); export with "
            "a smaller --ann_nlist (fewer, larger lists) or --ann off"
        )
    chosen = min(good, key=lambda c: c["search_ms"])
    faiss.write_index(chosen["ann"].index, str(out / INDEX_FILE))
    np.save(out / QUERIES_FILE, queries, allow_pickle=False)
    return {
        "kind": chosen["kind"],
        "metric": metric,
        "n_items": n_items,
        "dim": int(vectors.shape[1]),
        **{key: chosen.get(key) for key in ("nlist", "nprobe", "pq_m", "refine")},
        "recall_at_100": chosen["recall"],
        "recall_k": k,
        "tried": [{key: v for key, v in c.items() if key != "ann"} for c in tried],
        "target_recall": TARGET_RECALL,
        "queries": len(queries),
        "query_source": query_source,
        "train_vectors": chosen["train_vectors"],
        "build_s": round(time.perf_counter() - started, 2),
        "index_mib": round((out / INDEX_FILE).stat().st_size / 2**20, 1),
        "file": INDEX_FILE,
        "queries_file": QUERIES_FILE,
        "faiss_version": faiss.__version__,
    }
