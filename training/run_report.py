"""The end of a training run: test metrics of the best checkpoint next to the baselines.

Writes `metrics.json` into the run dir: the best epoch's validation metrics, full-ranking test
metrics (accuracy @10/@20, coverage, popularity lift, novelty), per-segment test metrics, the
baselines (MostPop, EASE, Markov) evaluated on the same split and targets, the per-epoch
validation history with wall-clock times, the time until validation NDCG@10 first reached a
threshold, the dataset's manifest hash and the seed.
"""

import time
from pathlib import Path

import torch
from rich.console import Console

from recstack.eval_report import metrics_table, table_columns, write_json
from recstack.manifest import CONTENT_HASH
from recstack.segments import segment_metrics, segments_to_dict
from recstack.training.eval.baselines_cmd import evaluate_baselines
from recstack.training.eval.evaluator import evaluate
from recstack.training.tasks.base import MONITOR

METRICS_FILE = "metrics.json"


def time_to_quality(history: list[dict], threshold: float) -> dict:
    """Wall seconds and epoch at which validation NDCG@10 first reached `threshold`."""
    for entry in history:
        if entry.get(MONITOR, 0.0) >= threshold:
            return {"threshold": threshold, "epoch": entry["epoch"], "wall_s": entry["wall_s"]}
    return {"threshold": threshold, "epoch": None, "wall_s": None}


def best_entry(history: list[dict]) -> dict:
    """The history entry (one per validated epoch) with the highest val NDCG@10; {} if none."""
    return max(history, key=lambda h: h[MONITOR]) if history else {}


def epochs_trained(history: list[dict]) -> int:
    """Epochs up to the last validation (history holds one entry per validation, which is not
    one per epoch when trainer.check_val_every_n_epoch > 1)."""
    return history[-1]["epoch"] + 1 if history else 0


def val_metrics(entry: dict) -> dict:
    """A history entry's validation metrics without the "val/" prefix."""
    return {k.removeprefix("val/"): v for k, v in entry.items() if k.startswith("val/")}


def load_best(task, best_path: str | Path | None) -> dict | None:
    """Load the best checkpoint's weights into `task` (kept as is when there is none)."""
    if not best_path:
        return None
    checkpoint = torch.load(best_path, map_location=task.device, weights_only=True)
    task.load_state_dict(checkpoint["state_dict"])
    return checkpoint


def test_result(task, datamodule, tie_orders: int):
    """The task's full-ranking test result at 10 and 20, its scoring network in eval mode."""
    task.scoring_net.eval()
    test_set = datamodule.eval_set("test")
    return evaluate(task.score_fn("test", tie_orders), test_set, ks=(10, 20), device=task.device)


def write_run_report(
    task,
    datamodule,
    run_dir: Path,
    best_path: str | None,
    fit_seconds: float,
    config: dict,
    baselines: bool = True,
    quality_threshold: float = 0.10,
    tie_orders: int = 1,
    console: Console | None = None,
) -> dict:
    console = console or Console(width=200)
    load_best(task, best_path)
    started = time.perf_counter()
    result = test_result(task, datamodule, tie_orders)
    eval_s = time.perf_counter() - started
    valid = evaluate(
        task.score_fn("valid", tie_orders), datamodule.eval_set("valid"), device=task.device
    )
    data = datamodule.data
    history = task.history
    best = best_entry(history)
    name = type(task.net).__name__
    rows = {name: result.metrics}
    payload = {
        "model": name,
        "run_dir": str(run_dir),
        "dataset": str(datamodule.dataset_dir),
        "manifest_hash": data.manifest.get(CONTENT_HASH),
        "split": datamodule.split,
        "seed": task.seed,
        "best_checkpoint": str(best_path) if best_path else None,
        "best_epoch": best.get("epoch"),
        "epochs_trained": epochs_trained(history),
        "fit_seconds": round(fit_seconds, 2),
        "train_batches": getattr(datamodule, "batches_from", None),
        "time_to_quality": time_to_quality(history, quality_threshold),
        "tie_orders": tie_orders,
        "valid": valid.metrics,  # the best checkpoint, scored like the test
        "valid_during_training": val_metrics(best),
        "test": result.metrics,
        "test_info": {**result.info, "eval_s": round(eval_s, 3)},
        "segments": segments_to_dict(segment_metrics(result, data.users)),
        "refit": None,  # the model refitted on TRAIN + VALID (training/refit): add_refit
        "baselines": {},
        "history": history,
        "config": config,
    }
    if baselines:
        runs, _ = evaluate_baselines(
            data.interactions, data.n_items, datamodule.split, device="cpu"
        )
        for baseline, run in runs.items():
            payload["baselines"][baseline] = run.metrics or {"skipped": run.skipped}
            rows[baseline] = run.metrics
    write_json(Path(run_dir) / METRICS_FILE, payload)
    title = (
        f"Test — {datamodule.split} split, full ranking over {data.n_items} items, "
        f"{result.n_users} users (best epoch {payload['best_epoch']})"
    )
    console.print(metrics_table(title, rows, table_columns((10, 20), False)))
    console.print(f"[dim]wrote {Path(run_dir) / METRICS_FILE}[/dim]", soft_wrap=True)
    return payload


def add_refit(run_dir: Path, payload: dict, refit: dict, console: Console | None = None) -> dict:
    """metrics.json with the refit's figures added beside the validated model's."""
    payload = {**payload, "refit": refit}
    write_json(Path(run_dir) / METRICS_FILE, payload)
    label = f"{payload['model']} refit ({refit['epochs']} epochs on train + valid)"
    title = f"Test of the refit — {payload['split']} split, full ranking"
    console = console or Console(width=200)
    console.print(metrics_table(title, {label: refit["test"]}, table_columns((10, 20), False)))
    return payload
