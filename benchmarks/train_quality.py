"""Quality over seeds: train the shipped ML-100K configs with several seeds and summarise.

    .venv/bin/python benchmarks/train_quality.py                       # SASRec + two-tower, 3 seeds
    .venv/bin/python benchmarks/train_quality.py --models '[sasrec]' --seeds '[0]'
    .venv/bin/python benchmarks/train_quality.py --models '[sasrec]' --seeds '[0]' \
        --overrides '[--model.init_args.model.similarity, cosine]' --out /tmp/variant.json

Each (model, seed) is one `recstack train --config configs/train/<model>_ml100k.yaml
--seed_everything <seed>` in its own process (run dirs under --runs); its metrics.json holds the
config, seed, manifest hash, per-epoch validation history and test metrics. This script
collects the test metrics (full ranking, LOO, seen items masked) as mean ± std over the seeds,
with the epochs, minutes and time to validation NDCG@10 >= 0.10 of every run and the baselines
(MostPop, EASE, Markov) evaluated on the same targets, and writes one JSON
(benchmarks/results/train_quality_ml100k.json by default).
"""

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from jsonargparse import auto_cli
from rich.console import Console

from recstack.eval_report import metrics_table, summarise, table_columns, write_json

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "sasrec": ROOT / "configs" / "train" / "sasrec_ml100k.yaml",
    "two_tower": ROOT / "configs" / "train" / "two_tower_ml100k.yaml",
}
SHIPPED_OUT = ROOT / "benchmarks" / "results" / "train_quality_ml100k.json"


def run_train(
    model: str, seed: int, dataset: Path, run_dir: Path, baselines: bool, extra: tuple = ()
) -> dict:
    """One `recstack train` of the model's shipped config (with `extra` flags) in its own
    process -> its metrics.json, with the command's wall time."""
    command = [
        str(Path(sys.executable).parent / "recstack"),
        "train",
        "--config",
        str(CONFIGS[model]),
        "--seed_everything",
        str(seed),
        "--data.dataset",
        str(dataset),
        "--run_dir",
        str(run_dir),
        "--baselines",
        str(baselines).lower(),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    report = json.loads((run_dir / "metrics.json").read_text())
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def _earlier(out: Path) -> dict:
    """The summary already at `out` ({} if none), read before any training: a file that is not
    one stops the job at once, not after hours of training."""
    if not out.exists():
        return {}
    try:
        earlier = json.loads(out.read_text())
    except ValueError:
        earlier = None
    if not isinstance(earlier, dict) or not isinstance(earlier.get("models"), dict):
        raise SystemExit(
            f"{out} is not a train_quality summary: move it away or pick another --out"
        )
    return earlier


def _kept_models(earlier: dict, results: dict) -> dict:
    """The models of the earlier summary that this job did not train, so that rerunning one
    model keeps the others' figures; dropped when it measured another dataset version."""
    if earlier.get("manifest_hash") != results.get("manifest_hash"):
        return {}
    return {m: entry for m, entry in earlier["models"].items() if m not in results["models"]}


def train_quality(
    models: list[str] = ["sasrec", "two_tower"],  # noqa: B006 - read only
    seeds: list[int] = [0, 1, 2],  # noqa: B006 - read only
    dataset: Path = Path("data/ml-100k"),
    runs: Path = Path("runs/quality"),
    out: Path = SHIPPED_OUT,
    overrides: list[str] = [],  # noqa: B006 - read only
) -> dict:
    """Train each model with each seed and write mean ± std of the test metrics.

    Args:
        models: any of "sasrec", "two_tower" (configs/train/<model>_ml100k.yaml).
        seeds: values of seed_everything.
        dataset: the prepared ML-100K dir (`recstack data prepare --source ml-100k --out ...`).
        runs: parent of the run dirs (<model>-seed<seed>).
        out: the JSON summary; the models it already holds and this job does not train stay.
        overrides: extra `recstack train` arguments for a recipe variant (they go into the JSON;
            give the variant its own `out` and `runs`, so that it never stands in for the
            shipped config's results).
    """
    if overrides and Path(out) == SHIPPED_OUT:
        raise SystemExit("a variant (--overrides) needs its own --out")
    earlier = _earlier(Path(out))
    console = Console(width=200)
    results: dict = {"models": {}, "baselines": None}
    for model in models:
        reports = []
        for seed in seeds:
            console.print(f"training {model} with seed {seed} ...")
            first = results["baselines"] is None
            run_dir = Path(runs) / f"{model}-seed{seed}"
            report = run_train(model, seed, dataset, run_dir, first, tuple(overrides))
            if first:
                results["baselines"] = report["baselines"]
                results["manifest_hash"] = report["manifest_hash"]
            reports.append(report)
            console.print(
                f"  test ndcg@10 {report['test']['ndcg@10']:.4f} hr@10 {report['test']['hr@10']:.4f}"
                f" after {report['epochs_trained']} epochs, {report['fit_seconds'] / 60:.1f} min"
            )
        results["models"][model] = {
            "config": str(CONFIGS[model].relative_to(ROOT)),
            "overrides": overrides,
            **summarise([r["test"] for r in reports]),
            "runs": [
                {
                    "seed": seed,
                    "run_dir": r["run_dir"],
                    "best_epoch": r["best_epoch"],
                    "epochs_trained": r["epochs_trained"],
                    "fit_minutes": round(r["fit_seconds"] / 60, 2),
                    "time_to_quality": r["time_to_quality"],
                    "valid": r["valid"],
                    "test": r["test"],
                }
                for seed, r in zip(seeds, reports, strict=True)
            ],
        }
    results["seeds"] = seeds
    results["models"] = {**_kept_models(earlier, results), **results["models"]}
    results["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    write_json(Path(out), results)
    rows = {m: results["models"][m]["mean"] for m in models}
    spread = {m: results["models"][m]["std"] for m in models}
    rows.update({name: metrics for name, metrics in (results["baselines"] or {}).items()})
    title = f"ML-100K test, full ranking, LOO: mean ± std over seeds {seeds}"
    console.print(metrics_table(title, rows, table_columns((10, 20), False), spread))
    console.print(f"[dim]wrote {out}[/dim]")
    return results


if __name__ == "__main__":
    auto_cli(train_quality, as_positional=False)
