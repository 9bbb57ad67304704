"""The JSON summary of a `benchmarks/gpu_check.sh` run: the headline figures of each step.

    python benchmarks/gpu_summary.py benchmarks/results/gpu > benchmarks/results/gpu/gpu_summary.json

Reads what the steps wrote in that folder (missing steps are listed, not fatal): training
s/epoch, samples/s and full-ranking validation time per size and model (train_bench), the
gpu-marked tests' outcome, the tuning study's best value, and inference_bench's targets,
ORT/torch parity and GPU retrieval rows.
"""

import json
import re
import sys
from pathlib import Path


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def training(folder: Path) -> list[dict]:
    rows = []
    for name in (
        "train_bench_gpu.json",
        "train_bench_gpu_compile.json",
        "train_bench_gpu_20m.json",
    ):
        document = _load(folder / name) or {}
        for run in document.get("runs", []):
            keys = ("size", "model", "compiled", "samples_per_s", "data_wait_share")
            row = {key: run.get(key) for key in keys}
            for key in ("epoch_s", "val_s"):  # measured, or scaled up from part of the epoch
                row[key] = run.get(key, run.get(f"{key}_estimated"))
                row[f"{key}_estimated"] = key not in run and f"{key}_estimated" in run
            rows.append(row | {"meets_target": run.get("meets_target")})
    return rows


def gpu_tests(folder: Path) -> str | None:
    try:
        lines = (folder / "gpu_tests.log").read_text().strip().splitlines()
    except OSError:
        return None
    outcome = [line for line in lines if re.search(r"\b(passed|failed|error)", line)]
    return outcome[-1].strip("= ") if outcome else lines[-1] if lines else None


def tuning(folder: Path) -> dict | None:
    """Trials, states and the best trial's validation NDCG@10 against the default config's."""
    document = _load(folder / "report.json") or _load(folder / "tune_gpu_report.json")
    if document is None:
        return None
    best, default = document.get("best") or {}, document.get("default_trial") or {}
    return {
        "trials": document.get("trials"),
        "states": document.get("states"),
        "default_val_ndcg@10": default.get("val_ndcg@10"),
        "best_val_ndcg@10": best.get("val_ndcg@10"),
    }


def inference(folder: Path) -> dict | None:
    """Targets, batch-1 model rows (torch on CUDA vs onnxruntime, with parity) and the GPU
    retrieval rows of inference_bench --device cuda."""
    document = _load(folder / "inference_bench_gpu.json")
    if document is None:
        return None
    keys = ("model", "length", "engine", "device", "p50_ms", "p50_ratio_to_torch", "max_abs_diff")
    models = [
        {k: r.get(k) for k in keys} for r in document.get("models", []) if r.get("batch") == 1
    ]
    keys = ("items", "method", "device", "batch", "recall", "p50_ms", "qps")
    gpu = [
        {k: r.get(k) for k in keys}
        for r in document.get("retrieval", [])
        if r.get("device") == "cuda"
    ]
    return {"targets": document.get("targets"), "models_batch_1": models, "gpu_retrieval": gpu}


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else "benchmarks/results/gpu")
    summary = {
        "folder": str(folder),
        "gpu_tests": gpu_tests(folder),
        "training": training(folder),
        "tuning": tuning(folder),
        "inference": inference(folder),
    }
    summary["missing"] = [key for key, value in summary.items() if value in (None, [])]
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
