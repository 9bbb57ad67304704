"""The artifact's ANN index, built at export so that no replica ever builds one.

    build_ann(vectors [n_items + 1, d], queries [Q, d], metric, nlist, out) -> the "ann" block

FAISS IVF with 8-bit scalar-quantised residuals (IVF-SQ8) and the inner-product metric over
item rows 1..n_items (FAISS id = item_idx; a cosine index holds unit rows). SQ8 scans a quarter
of IVF-Flat's bytes: at 1M items it reached the same recall@100 in about half the time, and
serving re-scores what it finds with the exact vectors (recstack.item_index.ItemIndex). k-means
trains on up to TRAIN_PER_LIST vectors per list. The probe count is the smallest rung of
NPROBE_LADDER whose recall@100 against exact search, over the sample queries, reaches
TARGET_RECALL; when none does the export fails. The index goes to
item_index.faiss and the queries to ann_queries.npy, so that serving re-measures the same
recall at load (`recstack.item_index.AnnIndex.load`).
"""

import math
import time
from pathlib import Path
from typing import Literal

import numpy as np

from recstack.errors import RecstackError
from recstack.item_index import EXACT_MAX_ITEMS, exact_top, recall, recall_k

AnnMode = Literal["auto", "on", "off"]  # auto: an index above EXACT_MAX_ITEMS items
Metric = Literal["inner_product", "cosine"]  # cosine: inner product of unit rows
INDEX_KIND = "faiss_ivf_sq8"
INDEX_FILE = "item_index.faiss"
QUERIES_FILE = "ann_queries.npy"
TARGET_RECALL = 0.95
NPROBE_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TRAIN_PER_LIST = 64  # k-means training vectors per list
MIN_PER_LIST = 39  # FAISS's own floor: fewer training vectors per list and k-means warns
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
    sample = np.random.default_rng(SEED).choice(len(rows), n_train, replace=False)
    index.cp.seed = SEED
    index.train(rows[np.sort(sample)])
    index.add_with_ids(rows, np.arange(1, len(rows) + 1, dtype=np.int64))
    return index, n_train


def _choose_nprobe(index, queries: np.ndarray, truth: np.ndarray) -> dict[int, float]:
    """recall@k per rung of the ladder, up to the first rung that reaches the target."""
    found = {}
    for nprobe in (p for p in NPROBE_LADDER if p <= index.nlist):
        index.nprobe = nprobe
        found[nprobe] = round(recall(index.search(queries, truth.shape[1])[1], truth), 4)
        if found[nprobe] >= TARGET_RECALL:
            break
    return found


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
    rows = np.ascontiguousarray(vectors[1:], dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    index, n_train = _train_ivf(rows, nlist)
    k = recall_k(n_items)
    by_nprobe = _choose_nprobe(index, queries, exact_top(vectors, queries, k))
    nprobe, best = list(by_nprobe.items())[-1]  # the first rung at the target, or the last
    if best < TARGET_RECALL:
        raise RecstackError(
            f"the ANN index reaches recall@{k} {best:.3f} at most (nprobe {nprobe} of nlist "
            f"{nlist}), below the target {TARGET_RECALL}; export with a smaller --ann_nlist "
            "(fewer, larger lists) or --ann off"
        )
    faiss.write_index(index, str(out / INDEX_FILE))
    np.save(out / QUERIES_FILE, queries, allow_pickle=False)
    return {
        "kind": INDEX_KIND,
        "metric": metric,
        "n_items": n_items,
        "dim": int(vectors.shape[1]),
        "nlist": nlist,
        "nprobe": nprobe,
        "recall_at_100": best,
        "recall_k": k,
        "recall_by_nprobe": {str(p): r for p, r in by_nprobe.items()},
        "target_recall": TARGET_RECALL,
        "queries": len(queries),
        "query_source": query_source,
        "train_vectors": n_train,
        "build_s": round(time.perf_counter() - started, 2),
        "index_mib": round((out / INDEX_FILE).stat().st_size / 2**20, 1),
        "file": INDEX_FILE,
        "queries_file": QUERIES_FILE,
        "faiss_version": faiss.__version__,
    }
