"""Inference speed: onnxruntime vs torch eager for the models, exact vs FAISS top-100 retrieval.

    .venv/bin/python benchmarks/inference_bench.py              # ~4 min on 2 cores
    .venv/bin/python benchmarks/inference_bench.py --quick --out /tmp/ib.json   # seconds
    .venv/bin/python benchmarks/inference_bench.py --device cuda   # on a GPU machine
    .venv/bin/python benchmarks/inference_bench.py --parts retrieval --items 1000000

This file is the command line and the JSON; the work lives in sibling modules:
- machine_probes: the machine's read/copy bandwidth and float32 GEMM peak at the start (best
  of numpy max / dot on --threads slices in threads and torch's sum; a square sgemm);
- inference_models: SASRec and the two-tower user tower, exported by recstack's exporters,
  torch eager vs onnxruntime per (batch, length) cell of --batches x --lengths, with
  torch.set_num_threads and ORT intra_op_num_threads both = --threads (on --device cuda, ORT
  rows are skipped, with a note, where onnxruntime has no CUDAExecutionProvider);
- inference_searchers and inference_retrieval: top --k over --items clustered vectors, exact
  (numpy, ORT, torch, FAISS flat) vs FAISS IVF and HNSW, recall against exact-numpy over
  --queries, each of --query-batches timed, exact rows against the bandwidth bound;
- inference_timing: the interleaved timing harness every cell goes through;
- inference_targets: the three targets; inference_report: the summary tables and the plot.
Writes JSON (--out) and a PNG (--plot) and prints a summary table.
"""

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).parent))  # this folder's modules, however it is run
from inference_models import N_ITEMS, bench_models
from inference_report import plot, print_tables
from inference_retrieval import CLUSTERS, DIM, SPREAD, bench_retrieval
from inference_searchers import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_NEIGHBOURS, IVF_NPROBE
from inference_targets import targets
from inference_timing import ROUNDS, TIME_BUDGET_S, background_load, log
from machine_info import machine, peak_rss_mib
from machine_probes import cpu_bandwidth, cpu_gemm_gflops, gpu_bandwidth_and_gemm

from recstack.training.export.onnx_common import PARITY_ATOL

RESULTS = Path(__file__).resolve().parent / "results"
QUICK = {  # --quick: tiny sizes for tests (seconds, not minutes)
    "items": [2000, 5000], "batches": [1, 4], "lengths": [5, 20], "repeats": 3,
    "queries": 32, "query_batches": [1, 8], "bandwidth_mib": 64,
}  # fmt: skip


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
