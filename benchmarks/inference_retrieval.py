"""Retrieval timing: top-k by inner product, exact vs FAISS, with recall and bandwidth.

Data: k-means-like clustered 64-d float32 vectors: 1,000 centres on the unit sphere with
Dirichlet(1) weights (uneven cluster sizes), each vector = centre + N(0, 0.15^2 I),
L2-normalised (as the cosine two-tower's item_embeddings); queries are drawn the same way, and
the catalogue sizes are prefixes of one sample. recall@k is against exact-numpy over all
queries; each query batch size is timed over consecutive query chunks (batch 1 = latency, the
largest = throughput).

Bandwidth: each exact CPU row's bound (`read_gbps`) is torch's sum over the same item matrix,
from its median time in blocks alternating with the search's own (`read_gbps_best`: its
fastest call), since a VM's read bandwidth can change from minute to minute. An exact
row's `gbps` = bytes of the item matrix (read once per call) / mean time,
`bandwidth_fraction` = gbps / read_gbps, `roofline_fraction` = max(bytes / read_gbps,
2*b*n*d flops / GEMM peak) / time: how close a call is to what the hardware allows at that
batch (from some batch on the GEMM, not the memory, bounds it).
"""

from itertools import chain

import numpy as np
import torch
from inference_searchers import EXACT, Search, exact_searchers, faiss_searchers
from inference_timing import interleaved, log

DIM = 64
CLUSTERS, SPREAD = 1000, 0.15


def clustered_vectors(
    rng: np.random.Generator, centres: np.ndarray, weights: np.ndarray, n: int
) -> np.ndarray:
    """n unit vectors [n, d]: a centre drawn by `weights`, plus N(0, SPREAD^2 I), normalised."""
    which = rng.choice(len(centres), size=n, p=weights)  # [n]
    x = rng.standard_normal((n, centres.shape[1]), dtype=np.float32)  # [n, d]
    x *= SPREAD
    x += centres[which]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(n_items: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(items [n_items, DIM], queries [n_queries, DIM]) from one mixture of CLUSTERS Gaussians."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.dirichlet(np.ones(CLUSTERS))
    items = clustered_vectors(rng, centres, weights, n_items)
    return items, clustered_vectors(rng, centres, weights, n_queries)


def search_all(search: Search, queries: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) [n_queries, k] of every query, `batch` queries per call."""
    parts = [search(queries[i : i + batch]) for i in range(0, len(queries), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |ids ∩ truth| / k (rows of ids [Q, k] against truth [Q, k])."""
    hits = [np.intersect1d(a, b).size for a, b in zip(ids, truth, strict=True)]
    return float(np.mean(hits) / truth.shape[1])


def roofline(n: int, batch: int, ms: float, read_gbps: float, gemm_gflops: float) -> dict:
    """Bandwidth and roofline figures of one exact call (`ms`) over an [n, DIM] float32
    matrix, read once per call at best at `read_gbps`, with 2 * batch * n * DIM flops."""
    nbytes, flops = n * DIM * 4, 2 * batch * n * DIM
    gbps = nbytes / (ms / 1e3) / 1e9
    bandwidth_ms = nbytes / (read_gbps * 1e9) * 1e3
    compute_ms = flops / (gemm_gflops * 1e9) * 1e3
    return {
        "gbps": gbps,
        "read_gbps": read_gbps,
        "bandwidth_fraction": gbps / read_gbps,
        "bandwidth_bound_ms": bandwidth_ms,
        "compute_bound_ms": compute_ms,
        "roofline_fraction": max(bandwidth_ms, compute_ms) / ms,
    }


def time_search(
    search: Search, queries: np.ndarray, batch: int, repeats: int, matrix: torch.Tensor | None
) -> tuple[dict, dict]:
    """Latency of `batch`-query calls over consecutive query chunks, and queries/s; given the
    item `matrix` (CPU), also the read bandwidth of torch's sum over it in GB/s ("typical":
    from its median time, "best": from its fastest call), timed in blocks alternating with the
    search's, so that both see the same share of the machine's fast and slow memory spells."""
    chunks = [queries[i : i + batch] for i in range(0, len(queries) - batch + 1, batch)]
    calls = {"search": lambda i: search(chunks[i % len(chunks)])}
    if matrix is not None:
        calls["read"] = lambda _: matrix.sum()
    timing = interleaved(calls, repeats, warmup=min(2, repeats))
    out = timing["search"] | {"qps": batch / (timing["search"]["mean_ms"] / 1e3)}
    if matrix is None:
        return out, {}
    gb = matrix.numel() * 4 / 1e9
    return out, {key: gb / (timing["read"][f"{stat}_ms"] / 1e3) for key, stat in
                 (("typical", "p50"), ("best", "min"))}  # fmt: skip


def bench_retrieval(args, device: str, ort_cuda: bool, bandwidth: dict) -> tuple[list, list]:
    """-> (rows: one per items x method x setting x batch, indexes: one per items x index)."""
    log.print(f"retrieval: generating {max(args.items):,} clustered {DIM}-d vectors ...")
    all_items, queries = make_data(max(args.items), args.queries)
    rows, indexes = [], []
    for n in sorted(args.items):
        items = all_items[:n]  # a prefix of an i.i.d. sample is one too
        matrix = torch.from_numpy(items)  # the bandwidth probe reads the same bytes
        every = chain(
            exact_searchers(items, args.k, args.threads, device, ort_cuda),
            faiss_searchers(items, args.k),
        )
        truth = truth_scores = built = None
        for method, dev, setting, search, info in every:
            scores, ids = search_all(search, queries, max(args.query_batches))
            if truth is None:  # exact-numpy comes first: the reference
                truth_scores, truth = scores, ids
            if info is not built:  # the first setting of a new index
                built = info
                indexes.append({"items": n, "method": method, "device": dev} | info)
            quality = {"recall": recall(ids, truth)}
            if method in EXACT:
                quality["score_max_abs_diff"] = float(np.abs(scores - truth_scores).max())
            probe = matrix if method in EXACT and dev == "cpu" else None
            for batch in args.query_batches:
                row = {"items": n, "method": method, "device": dev, "setting": setting}
                row |= {"batch": batch, "k": args.k} | quality
                timing, read = time_search(search, queries, batch, args.repeats, probe)
                row |= timing
                if method in EXACT:
                    peak = bandwidth["gpu" if dev == "cuda" else "cpu"]
                    read_gbps = read.get("typical", peak["read_gbps"])  # GPU: from the start
                    row |= roofline(n, batch, row["mean_ms"], read_gbps, peak["gemm_gflops"])
                    row["read_gbps_best"] = read.get("best", peak["read_gbps"])
                rows.append(row)
            label = " ".join(f"{k}={v}" for k, v in setting.items())
            log.print(f"  {n:,} {method} {label}: recall {quality['recall']:.3f}")
            del search  # it holds the index: let it go before the next one is built
    for row in rows:  # speed-up over the fastest exact CPU search at the same size and batch
        exact_qps = max(
            r["qps"]
            for r in rows
            if r["method"] in EXACT and r["device"] == "cpu"
            if (r["items"], r["batch"]) == (row["items"], row["batch"])
        )
        row["speedup_vs_best_exact_cpu"] = row["qps"] / exact_qps
    return rows, indexes
