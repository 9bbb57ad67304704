"""Inference speed: onnxruntime vs torch eager for the models, exact vs FAISS top-100 retrieval.

    .venv/bin/python benchmarks/inference_bench.py              # ~4 min on 2 cores
    .venv/bin/python benchmarks/inference_bench.py --quick --out /tmp/ib.json   # seconds
    .venv/bin/python benchmarks/inference_bench.py --device cuda   # on a GPU machine
    .venv/bin/python benchmarks/inference_bench.py --parts retrieval --items 1000000

Models: SASRec (`SASRecState`: items, lengths -> state) and the two-tower user tower
(`UserTower`: history, lengths, context, user -> user_vec) are built untrained from recstack's
config classes at ML-100K size (1,682 items, dim 64, SASRec 2 layers; the two-tower with the
ML-100K context/user fields, history_len raised to the longest --lengths) and exported with the
project's exporters (`export_sasrec`, the two-tower's `_export_towers`) into a temp dir;
weights do not change the timings. Each (batch, length) cell times torch eager (under
torch.inference_mode) and onnxruntime on the same inputs (full-length histories), with
torch.set_num_threads and ORT intra_op_num_threads both = --threads; the max |ORT - torch|
of the cell's output is recorded. On --device cuda torch runs on the GPU and ORT with the
CUDAExecutionProvider (skipped, with a note, where onnxruntime has none); both calls then
include copying the inputs in and the output back, as a server's would.

Retrieval: top-k (100) by inner product over --items vectors (64-d float32), k-means-like
clustered data: 1,000 centres on the unit sphere with Dirichlet(1) weights (uneven cluster
sizes), each vector = centre + N(0, 0.15^2 I), L2-normalised (as the cosine two-tower's
item_embeddings); queries are drawn the same way. The --items sets are prefixes of one sample.
Methods: exact-numpy (serving's path: matmul + `serving.item_index.top_n`), exact-ort (an ONNX
MatMul + TopK graph built with `onnx.helper`, the items as an initializer), exact-torch
(matmul + topk on --device), faiss-flat (IndexFlatIP), faiss-ivf (IndexIVFFlat, nlist = the
power of two nearest sqrt(items), trained on 64 * nlist sampled vectors; nprobe swept) and
faiss-hnsw (IndexHNSWFlat, M = 32 as serving once used, efConstruction = 40; efSearch swept, FAISS
uses max(efSearch, k)). recall@k is against exact-numpy over all --queries; each batch size
of --query-batches is timed over consecutive query chunks (batch 1 = latency, the largest =
throughput). Index build time and size (`index_mib`: FAISS's serialised bytes, the ONNX
graph's, the matrix's) are recorded, and the process RSS growth during the build
(`rss_delta_mib`; freed memory of an earlier index may be reused, so it can read low).

Bandwidth: this VM's read bandwidth switches between two levels (~35 and ~63 GB/s when it
was written) from minute to minute, so each exact CPU row's bound (`read_gbps`) is torch's sum
over the same item matrix, from its median time in blocks alternating with the search's own
(`read_gbps_best`: its fastest call); the machine's figures at the start are in "bandwidth"
(best of numpy max / dot on --threads slices in threads and torch's sum over 1 GiB; copy; and
the float32 GEMM peak, a square sgemm). An exact row's `gbps` = bytes of the item matrix (read
once per call) / mean time, `bandwidth_fraction` = gbps / read_gbps, `roofline_fraction` =
max(bytes / read_gbps, 2*b*n*d flops / GEMM peak) / time: how close a call is to what the
hardware allows at that batch (from some batch on the GEMM, not the memory, bounds it).

Targets (issue 7), evaluated on CPU rows: ORT p50 <= 0.5 x torch p50 at batch 1 (every model
and length); the best exact search at the throughput batch >= 50 % of the bandwidth bound at
the largest --items; an ANN setting with recall@k >= 0.95 at >= 10 x the best exact search's
queries/s at the largest --items and the throughput batch. Writes JSON (--out) and a PNG
(--plot) and prints a summary table.
"""

import argparse
import gc
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from itertools import chain
from pathlib import Path

import faiss
import matplotlib
import numpy as np
import onnx
import onnxruntime as ort
import psutil
import torch
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))  # this folder's modules, however it is run
from machine_info import machine, peak_rss_mib

from recstack.serving.item_index import top_n
from recstack.training.export.onnx_common import OPSET, PARITY_ATOL
from recstack.training.export.sasrec_onnx import ONNX_FILE as SASREC_FILE
from recstack.training.export.sasrec_onnx import SASRecState, export_sasrec
from recstack.training.export.two_tower_onnx import USER_FILE, ItemTower, UserTower, _export_towers
from recstack.training.models.sasrec import SASRec, SASRecConfig
from recstack.training.models.two_tower import FeatureSizes, TwoTower, TwoTowerConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"
N_ITEMS = 1682  # ML-100K's catalogue
CONTEXT = {"hour": 25, "weekday": 8}  # ML-100K's two-tower fields (sizes include code 0)
USER = {"gender": 3, "age": 8, "occupation": 22}
ITEM_TAGS, ITEM_CATS = 19, {"year": 12}
DIM = 64
CLUSTERS, SPREAD = 1000, 0.15
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 40
IVF_NPROBE = (1, 4, 8, 10, 12, 16, 32, 64)
HNSW_EF_SEARCH = (100, 128, 256, 512)
TIME_BUDGET_S = 1.5  # seconds of timed calls per engine and cell (about; >= ROUNDS calls)
ROUNDS = 5
MIN_LOAD_WINDOW_S = 0.1
EXACT = ("exact-numpy", "exact-ort", "exact-torch", "faiss-flat")
TARGETS = {"ort_over_torch_at_batch_1": 0.5, "bandwidth_fraction": 0.5}
TARGETS |= {"ann_recall": 0.95, "ann_speedup": 10.0}
QUICK = {  # --quick: tiny sizes for tests (seconds, not minutes)
    "items": [2000, 5000], "batches": [1, 4], "lengths": [5, 20], "repeats": 3,
    "queries": 32, "query_batches": [1, 8], "bandwidth_mib": 64,
}  # fmt: skip
log = Console(stderr=True, highlight=False, soft_wrap=True)


# ---- timing -------------------------------------------------------------------------------


def cpu_clock() -> tuple[float, float, float]:
    """(wall s, busy CPU s of the whole machine incl. steal, CPU s of this process)."""
    t, own = psutil.cpu_times(), psutil.Process().cpu_times()
    fields = ("user", "nice", "system", "irq", "softirq", "steal")
    busy = sum(getattr(t, name, 0.0) for name in fields)
    return time.perf_counter(), busy, own.user + own.system


def interleaved(
    calls: dict[str, Callable[[int], object]],
    repeats: int,
    warmup: int,
    rounds: int = ROUNDS,
    budget_s: float = TIME_BUDGET_S,
) -> dict[str, dict]:
    """Time each of `calls` (call(i), i = 0, 1, ...) in `rounds` alternating blocks
    (A x n, B x n, A x n, ...), so that the slow drifts of a shared VM hit them alike.

    After `warmup` untimed calls each, n = ceil(repeats / rounds), cut so that one call's
    blocks fit about `budget_s` (from the warm-up's pace; at least one call per block).
    -> {name: p50/mean/min ms, calls, other_load_cores}: other_load_cores is the CPU used
    meanwhile by other processes (and the hypervisor's steal), in cores, None when the blocks
    took under MIN_LOAD_WINDOW_S in all (too short to tell); well above 0 means the figures
    were taken on a busy machine."""
    pace = {}
    for name, call in calls.items():
        started = time.perf_counter()
        for i in range(warmup):
            call(i)
        pace[name] = (time.perf_counter() - started) / max(warmup, 1)
    ms: dict[str, list[float]] = {name: [] for name in calls}
    other = dict.fromkeys(calls, 0.0)
    wall = dict.fromkeys(calls, 0.0)
    for _ in range(rounds):
        for name, call in calls.items():
            fit = int(budget_s / rounds / max(pace[name], 1e-6))
            n = max(1, min(math.ceil(repeats / rounds), fit))
            before = cpu_clock()
            for i in range(n):
                t = time.perf_counter()
                call(i)
                ms[name].append((time.perf_counter() - t) * 1e3)
            after = cpu_clock()
            wall[name] += after[0] - before[0]
            other[name] += max(0.0, (after[1] - before[1]) - (after[2] - before[2]))
    out = {}
    for name, times in ms.items():
        x = np.asarray(times)
        load = other[name] / wall[name] if wall[name] >= MIN_LOAD_WINDOW_S else None
        out[name] = {"p50_ms": float(np.median(x)), "mean_ms": float(x.mean())}
        out[name] |= {"min_ms": float(x.min()), "calls": x.size, "other_load_cores": load}
    return out


def timed(call: Callable[[int], object], repeats: int, warmup: int) -> dict:
    """interleaved() for one callable."""
    return interleaved({"call": call}, repeats, warmup)["call"]


def settle_gc() -> None:
    """Collect, then freeze what survives: the exporter leaves millions of objects whose
    generation-2 rescans otherwise slow every torch call that follows (~50 % at batch 1)."""
    gc.collect()
    gc.freeze()


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# ---- machine ------------------------------------------------------------------------------


def cpu_bandwidth(mib: int, threads: int, repeats: int = 5) -> dict:
    """Read bandwidth in GB/s over a `mib` MiB float32 array, the best of `repeats` passes of
    several kernels: numpy max and dot on `threads` slices in a thread pool (numpy releases
    the GIL in both) and torch's sum (torch's `threads` threads); copy bandwidth too."""
    a = np.ones(mib * 2**20 // 4, dtype=np.float32)  # ones: the pages are really there
    b = np.zeros_like(a)
    a_parts, b_parts = np.array_split(a, threads), np.array_split(b, threads)
    kernels = {"numpy_max": np.max, "numpy_dot": lambda part: np.dot(part, part)}
    with ThreadPoolExecutor(threads) as pool:
        read = {
            name: a.nbytes / best_seconds(lambda k=k: list(pool.map(k, a_parts)), repeats) / 1e9
            for name, k in kernels.items()
        }
        copy_s = best_seconds(lambda: list(pool.map(np.copyto, b_parts, a_parts)), repeats)
    whole = torch.from_numpy(a)
    read["torch_sum"] = a.nbytes / best_seconds(whole.sum, repeats) / 1e9
    return {
        "array_mib": mib,
        "threads": threads,
        "read_gbps": max(read.values()),
        "read_gbps_by_kernel": read,
        "copy_gbps": 2 * a.nbytes / copy_s / 1e9,  # bytes read + bytes written
    }


def cpu_gemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    """float32 GEMM peak of numpy's BLAS: 2 n^3 flops per n x n matmul, best of `repeats`."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / best_seconds(lambda: a @ a, repeats) / 1e9


def gpu_bandwidth_and_gemm(device: str, mib: int = 1024, repeats: int = 10) -> dict:
    """The same figures on a CUDA device (torch sum over `mib` MiB; fp32 GEMM, TF32 as set)."""
    x = torch.ones(mib * 2**20 // 4, device=device)

    def read() -> None:
        x.sum()
        torch.cuda.synchronize(device)

    a = torch.randn(8192, 8192, device=device)

    def gemm() -> None:
        a @ a
        torch.cuda.synchronize(device)

    read(), gemm()
    return {
        "array_mib": mib,
        "read_gbps": x.numel() * 4 / best_seconds(read, repeats) / 1e9,
        "gemm_gflops": 2 * 8192**3 / best_seconds(gemm, repeats) / 1e9,
    }


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
    }


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


# ---- models -------------------------------------------------------------------------------


def build_models(lengths: list[int], workdir: Path) -> dict[str, dict]:
    """Untrained ML-100K-size SASRec and two-tower, exported to ONNX by recstack's exporters.

    -> {name: {"module", "config", "onnx" (path), "inputs" (names), "export_parity"}}
    """
    longest = max(lengths)
    sasrec = SASRec(SASRecConfig(n_items=N_ITEMS, max_len=max(200, longest))).eval()
    (workdir / "sasrec").mkdir()
    manifest = export_sasrec(sasrec, workdir / "sasrec")  # also checks parity, raises if off
    sizes = FeatureSizes(N_ITEMS, dict(CONTEXT), dict(USER), ITEM_TAGS, dict(ITEM_CATS))
    two_tower = TwoTower(TwoTowerConfig(history_len=max(50, longest)), sizes).eval()
    user, item = UserTower(two_tower).eval(), ItemTower(two_tower).eval()
    (workdir / "two_tower").mkdir()
    # export_two_tower also writes features.json from a prepared dataset; its tower export is:
    _export_towers(user, item, workdir / "two_tower")
    return {
        "sasrec": {
            "module": SASRecState(sasrec).eval(),
            "config": asdict(sasrec.config),
            "onnx": workdir / "sasrec" / SASREC_FILE,
            "inputs": ["items", "lengths"],
            "export_parity": manifest["parity"]["max_abs_diff"],
        },
        "two_tower_user": {
            "module": user,
            "config": asdict(two_tower.config) | asdict(sizes),
            "onnx": workdir / "two_tower" / USER_FILE,
            "inputs": user.input_names,  # history, lengths, context, user
            "export_parity": None,
        },
    }


def model_inputs(name: str, batch: int, length: int, rng: np.random.Generator) -> list:
    """Full-length histories (the most work per call) and in-range feature codes, int64."""
    items = rng.integers(1, N_ITEMS + 1, (batch, length))  # [B, L]
    lengths = np.full(batch, length, dtype=np.int64)  # [B]
    if name == "sasrec":
        return [items, lengths]
    context = np.stack([rng.integers(0, n, batch) for n in CONTEXT.values()], axis=1)  # [B, C]
    user = np.stack([rng.integers(0, n, batch) for n in USER.values()], axis=1)  # [B, U]
    return [items, lengths, context, user]


def ort_session(model: Path | bytes, threads: int, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=[provider])


def bench_cell(model: dict, session, arrays: list, device: str, repeats: int) -> list[dict]:
    """torch (and, given a session, onnxruntime) on one input batch -> their timing rows."""
    module, warmup = model["module"], min(5, repeats)

    def torch_call(_: int) -> np.ndarray:
        inputs = [torch.from_numpy(x).to(device) for x in arrays]
        return module(*inputs).cpu().numpy()

    calls = {"torch": torch_call}
    if session is not None:
        feeds = dict(zip(model["inputs"], arrays, strict=True))
        calls["onnxruntime"] = lambda _: session.run(None, feeds)
    with torch.inference_mode():  # ORT calls too: no harm, and the blocks alternate
        timing = interleaved(calls, repeats, warmup)
        expected = torch_call(0)
    torch_row = {"engine": "torch", "device": device} | timing["torch"]
    if session is None:
        return [torch_row]
    row = {"engine": "onnxruntime", "device": device, "provider": session.get_providers()[0]}
    row |= timing["onnxruntime"]
    row["p50_ratio_to_torch"] = row["p50_ms"] / torch_row["p50_ms"]
    row["max_abs_diff"] = float(np.abs(session.run(None, feeds)[0] - expected).max())
    row["export_parity"] = model["export_parity"]
    return [torch_row, row]


def bench_models(
    args, device: str, ort_provider: str | None, workdir: Path
) -> tuple[list[dict], dict]:
    """One torch row and one onnxruntime row per model x batch x length; the model configs."""
    log.print("models: exporting SASRec and the two-tower user tower ...")
    started = time.perf_counter()
    with warnings.catch_warnings():  # the exporter's deprecation chatter
        warnings.simplefilter("ignore")
        models = build_models(args.lengths, workdir)
    log.print(f"models: exported in {time.perf_counter() - started:.1f} s")
    settle_gc()
    rng = np.random.default_rng(0)
    rows = []
    for name, model in models.items():
        model["module"].to(device)
        session = ort_session(model["onnx"], args.threads, ort_provider) if ort_provider else None
        if session is not None and session.get_providers()[0] != ort_provider:
            log.print(f"note: onnxruntime could not use {ort_provider}; {name} ORT rows skipped")
            session = None
        for length in args.lengths:
            for batch in args.batches:
                arrays = model_inputs(name, batch, length, rng)
                cell = {"model": name, "batch": batch, "length": length}
                done = [cell | r for r in bench_cell(model, session, arrays, device, args.repeats)]
                rows += done
                log.print(
                    f"  {name} b={batch} L={length}: "
                    + ", ".join(
                        f"{r['engine']} {r['p50_ms']:.3f} ms (other load {r['other_load_cores'] or 0:.2f})"
                        for r in done
                    )
                    + (f", |diff| {done[-1]['max_abs_diff']:.1e}" if session else "")
                )
        model["module"].cpu()
    return rows, {name: model["config"] for name, model in models.items()}


# ---- retrieval ----------------------------------------------------------------------------


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


def topk_onnx(items: np.ndarray, k: int) -> bytes:
    """ONNX graph: query float32 [B, d] -> scores [B, k], item int64 [B, k] (best first) =
    TopK(MatMul(query, items^T)); the item matrix is an initializer [d, n]."""
    d = items.shape[1]
    nodes = [
        helper.make_node("MatMul", ["query", "items_t"], ["all_scores"]),  # [B, n]
        helper.make_node("TopK", ["all_scores", "k"], ["scores", "item"], axis=-1, largest=1),
    ]
    graph = helper.make_graph(
        nodes,
        "exact_topk",
        [helper.make_tensor_value_info("query", TensorProto.FLOAT, ["batch", d])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("item", TensorProto.INT64, ["batch", k]),
        ],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(items.T), "items_t"),
            numpy_helper.from_array(np.array([k], dtype=np.int64), "k"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10  # onnxruntime reads IR 10 (onnx's newest may be ahead of it)
    onnx.checker.check_model(model)
    return model.SerializeToString()


Search = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # [b, d] -> scores, ids [b, k]


def exact_searchers(items: np.ndarray, k: int, threads: int, device: str, ort_cuda: bool):
    """Yield (method, device, setting, search, build info) for the exact methods, exact-numpy
    first (the reference); each is built when reached and dropped after."""

    def numpy_search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = top_n(q @ items.T, k)  # serving's exact path
        return scores, ids

    matrix = {"build_s": 0.0, "index_mib": items.nbytes / 2**20}
    yield "exact-numpy", "cpu", {}, numpy_search, matrix
    for provider in ["CPUExecutionProvider"] + (["CUDAExecutionProvider"] if ort_cuda else []):
        before, started = rss_mib(), time.perf_counter()
        graph = topk_onnx(items, k)
        session = ort_session(graph, threads, provider)
        if session.get_providers()[0] != provider:  # e.g. the CUDA libraries failed to load
            log.print(f"note: onnxruntime could not use {provider}; exact-ort there skipped")
            continue
        info = {"build_s": time.perf_counter() - started, "index_mib": len(graph) / 2**20}
        info["rss_delta_mib"] = rss_mib() - before
        del graph

        def ort_search(q: np.ndarray, session=session) -> tuple[np.ndarray, np.ndarray]:
            scores, ids = session.run(None, {"query": q})
            return scores, ids

        yield "exact-ort", "cuda" if "CUDA" in provider else "cpu", {}, ort_search, info
    on_device = torch.from_numpy(items).to(device)  # [n, d]

    @torch.inference_mode()
    def torch_search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = torch.topk(torch.from_numpy(q).to(device) @ on_device.T, k)
        return scores.cpu().numpy(), ids.cpu().numpy()

    yield "exact-torch", device, {}, torch_search, dict(matrix)


def build_faiss(kind: str, items: np.ndarray, seed: int = 0):
    """-> (index, build info). flat: IndexFlatIP; ivf: IndexIVFFlat over an IndexFlatIP
    quantizer, trained on a sample; hnsw: IndexHNSWFlat (inner product)."""
    n, d = items.shape
    params: dict = {}
    before, started = rss_mib(), time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = 2 ** round(math.log2(math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False)
        index.train(items[np.sort(sample)])
        params = {"nlist": nlist, "train_vectors": len(sample)}
    else:
        index = faiss.IndexHNSWFlat(d, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"M": HNSW_NEIGHBOURS, "efConstruction": HNSW_EF_CONSTRUCTION}
    index.add(items)
    info = {"build_s": time.perf_counter() - started, "rss_delta_mib": rss_mib() - before}
    info |= {"index_mib": faiss.serialize_index(index).nbytes / 2**20, "params": params}
    return index, info


def faiss_searchers(items: np.ndarray, k: int):
    """Yield (method, "cpu", setting, search, build info): flat, then IVF per nprobe and HNSW
    per efSearch; one index is held at a time."""
    settings = {"flat": [{}], "ivf": [{"nprobe": p} for p in IVF_NPROBE]}
    settings["hnsw"] = [{"efSearch": ef} for ef in HNSW_EF_SEARCH]
    for kind, kind_settings in settings.items():
        log.print(f"  building faiss-{kind} over {len(items):,} items ...")
        index, info = build_faiss(kind, items)
        log.print(f"  faiss-{kind}: {info['build_s']:.1f} s")
        for setting in kind_settings:
            if "nprobe" in setting:
                index.nprobe = setting["nprobe"]
            if "efSearch" in setting:
                index.hnsw.efSearch = setting["efSearch"]
            yield f"faiss-{kind}", "cpu", setting, lambda q, index=index: index.search(q, k), info
        del index


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
    search's, so that both see the same share of this VM's fast and slow memory spells."""
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


# ---- targets, table, plot -----------------------------------------------------------------


def ort_target(model_rows: list[dict]) -> dict:
    """ORT p50 <= limit x torch p50 at batch 1, for every model and length (CPU rows)."""
    limit = TARGETS["ort_over_torch_at_batch_1"]
    checks = [
        {"model": r["model"], "length": r["length"], "ratio": r["p50_ratio_to_torch"]}
        | {"met": r["p50_ratio_to_torch"] <= limit}
        for r in model_rows
        if r["engine"] == "onnxruntime" and r["batch"] == 1 and r["device"] == "cpu"
    ]
    return {"limit": limit, "met": all(c["met"] for c in checks) if checks else None} | {
        "checks": checks
    }


BANDWIDTH_FIELDS = ("method", "mean_ms", "gbps", "read_gbps", "bandwidth_fraction")
BANDWIDTH_FIELDS += ("roofline_fraction",)
BANDWIDTH_FIELDS += ("bandwidth_bound_ms", "compute_bound_ms")


def bandwidth_target(exact: list[dict], n: int | None, query_batch: int) -> dict:
    """The best exact CPU search's share of the bandwidth bound at `n` items, per batch; the
    target is judged at the throughput batch. `reachable_at_gemm_peak` says whether the share
    can reach the limit at all there: a call does 2*b*d flops per item read (b / 2 flops per
    byte), so from some batch on the GEMM, not the memory, bounds it."""
    limit = TARGETS["bandwidth_fraction"]
    best_by_batch = {
        batch: max((r for r in exact if r["batch"] == batch), key=lambda r: r["bandwidth_fraction"])
        for batch in sorted({r["batch"] for r in exact})
    }
    out = {"limit": limit, "items": n, "batch": query_batch, "met": None}
    out |= {"reachable_at_gemm_peak": None, "best": None}
    best = best_by_batch.get(query_batch)
    if best is not None:
        bound = max(best["bandwidth_bound_ms"], best["compute_bound_ms"])
        out["met"] = best["bandwidth_fraction"] >= limit
        out["reachable_at_gemm_peak"] = best["bandwidth_bound_ms"] / bound >= limit
        out["best"] = {key: best[key] for key in BANDWIDTH_FIELDS}
    out["best_by_batch"] = {
        str(b): {key: r[key] for key in BANDWIDTH_FIELDS} for b, r in best_by_batch.items()
    }
    return out


def ann_target(cpu: list[dict], n: int | None, query_batch: int) -> dict:
    """The fastest ANN setting with recall >= the limit at `n` items and the throughput batch,
    and whether it is >= the speed-up limit over the best exact CPU search."""
    ok = [
        r
        for r in cpu
        if r["items"] == n and r["method"] not in EXACT and r["batch"] == query_batch
        if r["recall"] >= TARGETS["ann_recall"]
    ]
    fastest = max(ok, key=lambda r: r["qps"], default=None)
    out = {"recall": TARGETS["ann_recall"], "speedup": TARGETS["ann_speedup"], "items": n}
    out |= {"batch": query_batch, "met": False if n is not None else None, "best": None}
    if fastest is not None:
        keys = ("method", "setting", "recall", "qps", "speedup_vs_best_exact_cpu")
        out["best"] = {key: fastest[key] for key in keys}
        out["met"] = fastest["speedup_vs_best_exact_cpu"] >= TARGETS["ann_speedup"]
    return out


def targets(model_rows: list[dict], rows: list[dict], query_batch: int) -> dict:
    """The issue's three targets on CPU rows, each {"met": bool | None (not measured), ...};
    the retrieval ones at the largest catalogue."""
    cpu = [r for r in rows if r["device"] == "cpu"]
    n = max((r["items"] for r in cpu), default=None)
    exact = [r for r in cpu if r["items"] == n and r["method"] in EXACT]
    return {
        "ort_latency_le_half_torch_at_batch_1": ort_target(model_rows),
        "exact_batched_ge_half_bandwidth": bandwidth_target(exact, n, query_batch),
        "ann_recall_ge_0.95_at_10x_exact": ann_target(cpu, n, query_batch),
    }


def print_tables(model_rows: list[dict], rows: list[dict], goals: dict) -> None:
    console = Console()
    console.width = max(console.width, 120)
    if model_rows:
        table = Table(title="models: p50 ms per call (ORT / torch = ratio of p50)")
        for column in ("model", "length", "batch", "torch", "ORT", "ORT / torch", "max |diff|"):
            table.add_column(column, justify="left" if column == "model" else "right")
        torch_rows = {
            (r["model"], r["length"], r["batch"]): r for r in model_rows if r["engine"] == "torch"
        }
        for r in model_rows:
            if r["engine"] != "onnxruntime":
                continue
            t = torch_rows[(r["model"], r["length"], r["batch"])]
            table.add_row(
                r["model"], str(r["length"]), str(r["batch"]), f"{t['p50_ms']:.3f}",
                f"{r['p50_ms']:.3f}", f"{r['p50_ratio_to_torch']:.2f}", f"{r['max_abs_diff']:.1e}",
            )  # fmt: skip
        console.print(table)
    if rows:
        table = Table(title="retrieval: top-k, mean ms per call (GB/s and fraction: exact only)")
        columns = ("items", "method", "setting", "batch", "ms", "queries/s", "recall")
        for column in (*columns, "× exact", "GB/s", "of BW"):
            table.add_column(column, justify="left" if column in ("method", "setting") else "right")
        for r in rows:
            gbps = f"{r['gbps']:.1f}" if "gbps" in r else ""
            fraction = f"{r['bandwidth_fraction']:.0%}" if "gbps" in r else ""
            setting = " ".join(f"{k}={v}" for k, v in r["setting"].items())
            table.add_row(
                f"{r['items']:,}", f"{r['method']} ({r['device']})", setting, str(r["batch"]),
                f"{r['mean_ms']:.2f}", f"{r['qps']:,.0f}", f"{r['recall']:.3f}",
                f"{r['speedup_vs_best_exact_cpu']:.1f}", gbps, fraction,
            )  # fmt: skip
        console.print(table)
    for name, goal in goals.items():
        met = {None: "[yellow]not measured[/]", True: "[green]met[/]", False: "[red]missed[/]"}
        console.print(f"target {name}: {met[goal['met']]}")


def plot(model_rows: list[dict], rows: list[dict], query_batch: int, path: Path) -> None:
    """Left: p50 latency per model x engine over batch x length; right: recall vs queries/s."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    cells = sorted({(r["batch"], r["length"]) for r in model_rows})
    for model in sorted({r["model"] for r in model_rows}):
        for engine, style in (("torch", "o--"), ("onnxruntime", "s-")):
            by_cell = {
                (r["batch"], r["length"]): r["p50_ms"]
                for r in model_rows
                if (r["model"], r["engine"]) == (model, engine)
            }
            if by_cell:
                ys = [by_cell.get(cell, np.nan) for cell in cells]
                left.plot(range(len(cells)), ys, style, label=f"{model} {engine}")
    left.set_xticks(range(len(cells)), [f"{b}×{n}" for b, n in cells], rotation=45)
    left.set(yscale="log", xlabel="batch × history length", ylabel="p50 ms per call")
    left.set_title("model inference: onnxruntime vs torch eager")
    left.grid(True, which="both", alpha=0.3)
    if model_rows:
        left.legend(fontsize=8)
    colours = {method: f"C{i}" for i, method in enumerate(dict.fromkeys(r["method"] for r in rows))}
    for n, marker in zip(sorted({r["items"] for r in rows}), "so^Dv", strict=False):
        at_batch = [r for r in rows if r["items"] == n and r["batch"] == query_batch]
        for method in dict.fromkeys(r["method"] for r in at_batch):
            for dev in sorted({r["device"] for r in at_batch if r["method"] == method}):
                points = [r for r in at_batch if (r["method"], r["device"]) == (method, dev)]
                label = f"{method}{' (cuda)' if dev == 'cuda' else ''}, {n:,} items"
                line = "-" if len(points) > 1 else ""
                right.plot(
                    [p["qps"] for p in points], [p["recall"] for p in points], marker + line,
                    color=colours[method], label=label, alpha=0.85,
                    fillstyle="full" if n == max(r["items"] for r in rows) else "none",
                )  # fmt: skip
                for p in points:
                    if p["setting"]:
                        right.annotate(
                            str(next(iter(p["setting"].values()))), (p["qps"], p["recall"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points",
                        )  # fmt: skip
    if rows:
        right.axhline(TARGETS["ann_recall"], color="grey", linestyle=":", linewidth=1)
    right.set(xscale="log", xlabel=f"queries/s (batch {query_batch})", ylabel="recall@k vs exact")
    right.set_title("top-k retrieval (labels: nprobe / efSearch; dotted: recall target)")
    right.grid(True, which="both", alpha=0.3)
    if rows:
        right.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- CLI ----------------------------------------------------------------------------------


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="onnxruntime vs torch model latency; exact vs FAISS top-k retrieval",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--items", type=positive, nargs="+", default=[100_000, 1_000_000], help="catalogue sizes"
    )
    parser.add_argument(
        "--batches", type=positive, nargs="+", default=[1, 8, 64], help="model batch sizes"
    )
    parser.add_argument(
        "--lengths", type=positive, nargs="+", default=[20, 50, 200], help="history lengths"
    )
    parser.add_argument(
        "--repeats",
        type=positive,
        default=100,
        help=f"timed calls per engine and cell: at most, at least {ROUNDS}, fewer where they "
        f"would take over ~{TIME_BUDGET_S} s",
    )
    parser.add_argument("--queries", type=positive, default=256, help="queries for recall")
    parser.add_argument(
        "--query-batches",
        type=positive,
        nargs="+",
        default=[1, 8, 64],
        help="retrieval batch sizes (the largest = the throughput batch)",
    )
    parser.add_argument("--k", type=positive, default=100, help="top-k")
    parser.add_argument(
        "--threads",
        type=positive,
        default=os.cpu_count() or 1,
        help="torch, onnxruntime (intra-op) and FAISS threads",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="for torch (and ORT's provider)"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["models", "retrieval"],
        default=["models", "retrieval"],
        help="what to run",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    parser.add_argument("--out", type=Path, help="JSON; None: results/inference_bench[_quick].json")
    parser.add_argument("--plot", type=Path, help="PNG; None: --out with .png")
    parser.add_argument(
        "--bandwidth-mib", type=positive, default=1024, help="array for the bandwidth test"
    )
    args = parser.parse_args(argv)
    if args.quick:  # tiny sizes unless given explicitly
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv or sys.argv[1:]}
        for name, value in QUICK.items():
            if name not in given:
                setattr(args, name, value)
    args.batches, args.lengths = sorted(set(args.batches)), sorted(set(args.lengths))
    args.items, args.query_batches = sorted(set(args.items)), sorted(set(args.query_batches))
    if "retrieval" in args.parts:
        if min(args.items) <= args.k:
            parser.error(f"--items must all be > --k ({args.k}), got {min(args.items)}")
        if max(args.query_batches) > args.queries:
            parser.error(
                f"--queries ({args.queries}) must be >= the largest --query-batches "
                f"({max(args.query_batches)})"
            )
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (use --device cpu)")
    name = "inference_bench_quick" if args.quick else "inference_bench"
    args.out = args.out or RESULTS / f"{name}.json"
    args.plot = args.plot or args.out.with_suffix(".png")
    return args


def quiet() -> None:
    """The exporter's log lines (torchvision ops missing) and ORT's warnings are not news."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)


def background_load(rows: list[dict], notes: list[str]) -> dict:
    """Max and mean other_load_cores over the timed cells; a note when the machine was busy."""
    loads = [r["other_load_cores"] for r in rows if r["other_load_cores"] is not None]
    load = {"max_other_load_cores": max(loads, default=0.0)}
    load["mean_other_load_cores"] = float(np.mean(loads)) if loads else 0.0
    busy = sum(value > 0.25 for value in loads)
    if busy:
        notes.append(
            f"other processes used > 0.25 cores during {busy} of {len(loads)} timed cells (up "
            f"to {load['max_other_load_cores']:.2f}; other_load_cores per row): those figures "
            "are pessimistic"
        )
        log.print(f"note: {notes[-1]}")
    return load


def describe(args: argparse.Namespace, model_configs: dict) -> dict:
    """The run's settings for the JSON: the CLI arguments, the models, the data, FAISS."""
    config = {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()}
    return config | {
        "models": model_configs
        | {"n_items": N_ITEMS, "inputs": "full-length histories, in-range codes; untrained"},
        "data": {
            "kind": "mixture of Gaussians around unit centres, vectors L2-normalised",
            "clusters": CLUSTERS,
            "weights": "Dirichlet(1)",
            "spread_per_dim": SPREAD,
            "dim": DIM,
        },
        "faiss": {
            "ivf_nprobe": IVF_NPROBE,
            "hnsw_M": HNSW_NEIGHBOURS,
            "hnsw_efConstruction": HNSW_EF_CONSTRUCTION,
            "hnsw_efSearch": HNSW_EF_SEARCH,
        },
        "time_budget_s_per_cell": TIME_BUDGET_S,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    quiet()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    notes = [
        "numpy's BLAS runs with its own thread count (one per core unless OPENBLAS_NUM_THREADS)"
    ]
    ort_cuda = False
    ort_provider: str | None = "CPUExecutionProvider"
    if args.device == "cuda":
        ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        ort_provider = "CUDAExecutionProvider" if ort_cuda else None
        if not ort_cuda:
            notes.append("onnxruntime has no CUDAExecutionProvider here: ORT rows on cuda skipped")
            log.print(f"note: {notes[-1]}")
    log.print(f"bandwidth: {args.bandwidth_mib} MiB, {args.threads} threads ...")
    bandwidth = {"cpu": cpu_bandwidth(args.bandwidth_mib, args.threads)}
    bandwidth["cpu"]["gemm_gflops"] = cpu_gemm_gflops()
    if args.device == "cuda":
        bandwidth["gpu"] = gpu_bandwidth_and_gemm(args.device)
    log.print(f"bandwidth: {json.dumps(bandwidth)}")
    model_rows, model_configs, rows, indexes, timings = [], {}, [], [], {}
    if "models" in args.parts:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="inference-bench-") as workdir:
            model_rows, model_configs = bench_models(args, args.device, ort_provider, Path(workdir))
        timings["models_s"] = time.perf_counter() - t
    if "retrieval" in args.parts:
        t = time.perf_counter()
        rows, indexes = bench_retrieval(args, args.device, ort_cuda, bandwidth)
        timings["retrieval_s"] = time.perf_counter() - t
    goals = targets(model_rows, rows, max(args.query_batches))
    off = [r for r in model_rows if r.get("max_abs_diff", 0.0) > PARITY_ATOL]
    if off:
        notes.append(
            f"ORT differs from torch by > {PARITY_ATOL} in {len(off)} cells (max_abs_diff)"
        )
        log.print(f"[red]note: {notes[-1]}[/]")
    load = background_load(model_rows + rows, notes)
    timings["total_s"] = time.perf_counter() - started
    result = {
        "benchmark": "inference_bench",
        "machine": machine(threads=args.threads) | {"peak_rss_mib": peak_rss_mib()},
        "versions": versions(),
        "config": describe(args, model_configs),
        "bandwidth": bandwidth,
        "targets": goals,
        "models": model_rows,
        "retrieval": rows,
        "indexes": indexes,
        "timings": timings,
        "background_load": load,
        "notes": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(model_rows, rows, max(args.query_batches), args.plot)
    print_tables(model_rows, rows, goals)
    print(f"wrote {args.out} and {args.plot} in {timings['total_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
