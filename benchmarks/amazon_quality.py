"""Quality on the Amazon Beauty and Sports logs beside the published anchors (issue 19, item 2).

    .venv/bin/python benchmarks/amazon_quality.py --stages '[baselines]'            # both datasets
    .venv/bin/python benchmarks/amazon_quality.py --stages '[train]' --datasets '[beauty]' \
        --models '[sasrec]' --seeds '[0]' --max_epochs 3 --label cpu-3ep          # a short run
    .venv/bin/python benchmarks/amazon_quality.py --stages '[train]'  # 3 seeds, both models

`--data` holds `Beauty.txt` and `Sports_and_Outdoors.txt` (one user per line, `user item item
...`; default `../shared/data/amazon` beside the repository). Each file is prepared once with
`recstack data prepare --source seqlines:FILE` into `runs/amazon/<dataset>` (reused while its
manifest's raw sha256 matches the file; ordinal time, docs/architecture.md §3).

Stages, each a separate `recstack` process (its peak RSS from wait4):
- `baselines`: `recstack eval baselines` (MostPop, EASE with λ chosen on validation, Markov),
  full ranking, LOO (docs/architecture.md §5). EASE's solve is dense float64 (n_items² × 8 B
  per copy), so its fit time and the process's peak RSS are recorded.
- `train`: `recstack train` with the shipped ML-100K configs unchanged (configs/train/
  <model>_ml100k.yaml) except the dataset, run dir and seed, and optionally `--max_epochs`
  (a run stopped by it is marked `truncated`: its test figures are not final results) and
  `--quality_threshold` = the anchor's NDCG@10 (time to quality, on validation NDCG@10).
  `--test_tie_orders 1` by default: seqlines data has no equal timestamps, so the config's 8
  tie orders would score 8 identical orders (docs/architecture.md §5, "Ties in the log").
  `--refit true` by default: each run also reports its config refitted on TRAIN + VALID for
  the validated epoch count (§5, "Refit"). The anchor trained on TRAIN only, so the validated
  model's test is the one set against it; the baselines are fitted on TRAIN + VALID for the
  test, so the refit's test is the one set against them. `--overrides` (with a `--label`)
  runs a recipe variant; variants are summarised apart from the shipped recipe.
- `refit` (in this process): refits the finished runs that were trained without it.
- `pipeline`: the first seed's two-tower and SASRec exported (`recstack export`) and served as
  retriever (top 100) and ranker by `recstack eval artifacts` on the test targets, with the
  ratio of its NDCG@10 to SASRec's own full ranking of the same users (§5).
- `analysis` (in this process): a SASRec run's best checkpoint against Markov per user: finer
  history-length buckets, the last-item -> target transition seen or not, SASRec fed only its
  last 1 or 3 items, hit overlap. `profile`: ms per SASRec training step on real batches with
  full CE (float32, bf16 autocast), sampled softmax (256 or 1024 negatives, logQ) and the
  network alone (docs/architecture.md §6). Time it on an otherwise idle machine.
- `table`: prints the markdown tables of benchmarks/README.md from the JSON.

Each dataset gets one JSON, benchmarks/results/amazon_<dataset>.json, updated in place by each
stage (a stage rewrites only its own section; train runs are keyed by model, seed and label):
the dataset (manifest hash, counts, history lengths), the published anchor and the targets,
baselines with per-segment metrics, and per run the seed, config, per-epoch validation
trajectory with seconds per epoch, time to quality and test metrics; mean ± std over the
complete (not truncated) runs of each recipe, for the validated and the refit models.
"""

import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from jsonargparse import auto_cli
from rich.console import Console

from recstack.eval_report import metrics_table, summarise, table_columns, write_json

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "amazon"
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = {
    "sasrec": ROOT / "configs" / "train" / "sasrec_ml100k.yaml",
    "two_tower": ROOT / "configs" / "train" / "two_tower_ml100k.yaml",
}
# Published full-ranking test figures on these exact files: ICLRec (Chen et al., WWW 2022),
# from ../shared/data/README.md. Targets of issue 19: 1.3x the anchor's NDCG@10, and SASRec
# >= 1.15x the best recstack baseline (Markov or EASE).
DATASETS = {
    "beauty": {
        "file": "Beauty.txt",
        "anchor": {
            "source": "ICLRec (Chen et al., WWW 2022), test, full ranking",
            "hr@10": 0.0744,
            "ndcg@10": 0.0403,
            "hr@20": 0.1058,
            "ndcg@20": 0.0483,
        },
    },
    "sports": {
        "file": "Sports_and_Outdoors.txt",
        "anchor": {
            "source": "ICLRec (Chen et al., WWW 2022), test, full ranking",
            "hr@10": 0.0437,
            "ndcg@10": 0.0238,
            "hr@20": 0.0646,
            "ndcg@20": 0.0291,
        },
    },
}
ANCHOR_FACTOR, BASELINE_FACTOR, PIPELINE_FACTOR = 1.3, 1.15, 0.97  # issue 19's targets
# `recstack tune` search spaces: the shipped ones, unchanged (the tuned row is per dataset)
SEARCHES = {
    "sasrec": ROOT / "configs" / "search" / "sasrec_ml100k.yaml",
    "two_tower": ROOT / "configs" / "search" / "two_tower.yaml",
}
TUNED = "tuned"  # the label of a study's best trial among the runs
STAGES = ("baselines", "train", "tune", "refit", "pipeline", "analysis", "profile", "table")
METRIC = "ndcg@10"


def recstack_bin() -> str:
    return str(Path(sys.executable).parent / "recstack")


def run_logged(command: list[str], log: Path) -> dict:
    """Run `command` with output to `log`; wall seconds and the child's own peak RSS (wait4)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode}):\n{tail}")
    return {
        "command": " ".join(command),
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # Linux: KiB
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare(raw: Path, out: Path) -> dict:
    """`recstack data prepare --source seqlines:raw --out out` unless `out` holds it already."""
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if sha256(raw) in manifest.get("raw_sha256", {}).values():
            return manifest
    command = [recstack_bin(), "data", "prepare", "--source", f"seqlines:{raw}", "--out", str(out)]
    run_logged(command, out.parent / f"{out.name}-prepare.log")
    return json.loads(manifest_path.read_text())


def history_lengths(dataset: Path) -> dict:
    """Per-user sequence lengths (all events) and test-history lengths (TRAIN + VALID)."""
    frame = pl.read_parquet(dataset / "interactions.parquet", columns=["user_idx", "split_loo"])
    per_user = frame.group_by("user_idx").agg(
        pl.len().alias("events"), (pl.col("split_loo") < 2).sum().alias("test_history")
    )
    stats = {}
    for column in ("events", "test_history"):
        values = per_user[column]
        stats[column] = {
            "mean": round(float(values.mean()), 2),
            **{f"p{q}": float(values.quantile(q / 100, "nearest")) for q in (10, 50, 90, 99)},
            "max": int(values.max()),
        }
    return stats


def dataset_entry(name: str, data: Path, runs: Path) -> dict:
    spec = DATASETS[name]
    raw = data / spec["file"]
    if not raw.exists():
        raise SystemExit(
            f"{raw} not found; pass --data with Beauty.txt and Sports_and_Outdoors.txt"
        )
    path = runs / name
    manifest = prepare(raw, path)
    return {
        "name": name,
        "raw_file": str(raw),
        "raw_sha256": manifest["raw_sha256"],
        "path": str(path),
        "manifest_hash": manifest["content_hash"],
        "time": manifest["time"],
        "counts": manifest["counts"],
        "history_lengths": history_lengths(path),
        "prepare_command": f"recstack data prepare --source seqlines:{raw} --out {path}",
    }


def run_baselines(
    dataset: dict, runs: Path, ease_lambdas: list[float] | None, ease_max_items: int | None
) -> dict:
    out = runs / f"baselines-{dataset['name']}.json"
    command = [recstack_bin(), "eval", "baselines", "--dataset", dataset["path"]]
    command += ["--out", str(out), "--device", "cpu"]
    if ease_lambdas:
        command += ["--ease_lambdas", json.dumps(ease_lambdas)]
    if ease_max_items is not None:  # EASE is skipped above it, the reason in the report
        command += ["--ease_max_items", str(ease_max_items)]
    process = run_logged(command, runs / f"baselines-{dataset['name']}.log")
    report = json.loads(out.read_text())
    if report["manifest_hash"] != dataset["manifest_hash"]:
        raise SystemExit(f"{out} is for another version of {dataset['path']}")
    return {
        "split": report["split"],
        "eval": report["eval"],
        "n_items": report["n_items"],
        "models": report["models"],
        "process": process,
    }


def epoch_table(history: list[dict]) -> list[dict]:
    """Per validated epoch: cumulative and per-epoch wall seconds (training + one validation)."""
    rows, previous = [], 0.0
    for entry in history:
        wall = entry.get("wall_s") or 0.0
        rows.append(
            {
                "epoch": entry["epoch"],
                "wall_s": round(wall, 1),
                "epoch_s": round(wall - previous, 1),
                **{k.removeprefix("val/"): v for k, v in entry.items() if k.startswith("val/")},
            }
        )
        previous = wall
    return rows


def run_train(
    dataset: dict,
    model: str,
    seed: int,
    runs: Path,
    max_epochs: int | None,
    label: str | None,
    test_tie_orders: int,
    overrides: list[str] = (),
    refit: bool = True,
    resume: bool = False,
) -> dict:
    key = f"{model}-seed{seed}" + (f"-{label}" if label else "")
    run_dir = runs / dataset["name"] / key
    threshold = DATASETS[dataset["name"]]["anchor"][METRIC]
    command = [recstack_bin(), "train", "--config", str(CONFIGS[model])]
    command += ["--seed_everything", str(seed), "--data.dataset", dataset["path"]]
    command += ["--run_dir", str(run_dir), "--baselines", "false"]
    command += ["--trainer.enable_progress_bar", "false", "--quality_threshold", str(threshold)]
    command += ["--test_tie_orders", str(test_tie_orders), "--refit", str(refit).lower()]
    if max_epochs is not None:
        command += ["--trainer.max_epochs", str(max_epochs)]
    command += list(overrides)  # a recipe variant: label it, so it never replaces the default
    resumed = resume and (run_dir / "checkpoints" / "last.ckpt").is_file()
    if resumed:  # exact resume of a stopped run; its fit time counts from the resume
        command += ["--ckpt_path", "last"]
    process = run_logged(command, run_dir.parent / f"{key}.log")
    report = json.loads((run_dir / "metrics.json").read_text())
    # Stopped by the epoch limit, not by early stopping: the test figures are not final.
    truncated = max_epochs is not None and report["epochs_trained"] >= max_epochs
    run = {"key": key, "model": model, "seed": seed, "label": label}
    run |= {"overrides": list(overrides), "resumed": resumed, "truncated": truncated}
    return run_entry(dataset, run, report, str(CONFIGS[model].relative_to(ROOT)), process)


def run_entry(dataset: dict, run: dict, report: dict, config: str, process: dict) -> dict:
    """`run` (key, model, seed, label, ...) with the figures of its metrics.json `report`."""
    if report["manifest_hash"] != dataset["manifest_hash"]:
        raise SystemExit(f"{report['run_dir']} trained on another version of {dataset['path']}")
    epochs = epoch_table(report["history"])
    eval_s = report["test_info"].get("eval_s")
    return {
        **run,
        "config": config,
        "config_max_epochs": report["config"]["trainer"]["max_epochs"],
        "history_len": report["config"]["model"]["init_args"]["model"].get("history_len"),
        "run_dir": report["run_dir"],
        "best_epoch": report["best_epoch"],
        "epochs_trained": report["epochs_trained"],
        "fit_minutes": round(report["fit_seconds"] / 60, 2),
        "epochs": epochs,
        "mean_epoch_s": round(sum(e["epoch_s"] for e in epochs) / max(len(epochs), 1), 1),
        "test_eval_s": eval_s,  # one full-ranking pass over the test users (x tie orders)
        "time_to_quality": report["time_to_quality"],
        "valid": report["valid"],
        "test": report["test"],
        "segments": report["segments"],
        "refit": _refit_entry(report.get("refit")),
        "process": process,
    }


def run_tune(
    dataset: dict, model: str, runs: Path, n_trials: int, timeout_s: float | None
) -> tuple[dict, dict]:
    """`recstack tune` of the shipped config on this dataset with the shipped search space
    (SEARCHES), its study in runs/<dataset>/<model>-tune (resumed by the same command). The
    study's best trial (selected on validation; its test computed once by the tune report)
    becomes the run `<model>-seed<s>-tuned`; the study's summary is returned beside it."""
    import yaml

    from recstack.training.run_report import METRICS_FILE
    from recstack.training.tuning.objective import TRIAL_CONFIG, trial_dir

    study = f"{model}-tune"
    study_dir = runs / dataset["name"] / study
    study_dir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(CONFIGS[model].read_text())
    config["data"]["dataset"] = dataset["path"]
    config |= {"run_dir": str(study_dir / "base-run"), "baselines": False, "test_tie_orders": 1}
    config["quality_threshold"] = DATASETS[dataset["name"]]["anchor"][METRIC]
    base = study_dir / "base.yaml"
    base.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [recstack_bin(), "tune", "--config", str(base), "--search", str(SEARCHES[model])]
    command += ["--study", study, "--out", str(study_dir), "--n-trials", str(n_trials)]
    if timeout_s is not None:
        command += ["--timeout", str(timeout_s)]
    process = run_logged(command, study_dir.parent / f"{study}.log")
    report = json.loads((study_dir / "report.json").read_text())
    best = report.get("best")
    if not best or "test" not in best:
        raise SystemExit(f"{study_dir}: no complete trial with test figures; see report.md")
    best_dir = trial_dir(study_dir, best["number"])
    metrics = json.loads((best_dir / METRICS_FILE).read_text())
    # the test report is written after the fit, from the best checkpoint: the fit's own facts
    # come from the study (epochs, best epoch, minutes of the trial)
    row = next(r for r in csv.DictReader((study_dir / "trials.csv").open())
               if int(r["trial"]) == best["number"])  # fmt: skip
    metrics |= {"best_epoch": best["best_epoch"], "epochs_trained": int(row["epochs"])}
    metrics["fit_seconds"] = float(row["minutes"]) * 60
    seed = config.get("seed_everything", 0)
    run = {"key": f"{model}-seed{seed}-{TUNED}", "model": model, "seed": seed, "label": TUNED}
    run |= {"overrides": [f"{k}={v}" for k, v in best["params"].items()]}
    run |= {"resumed": False, "truncated": False}
    entry = run_entry(dataset, run, metrics, str(best_dir / TRIAL_CONFIG), process)
    keys = ("study", "trials", "states", "wall_minutes", "trial_minutes", "default_trial")
    summary = {k: report[k] for k in keys} | {
        "search": str(SEARCHES[model].relative_to(ROOT)),
        "best_trial": best["number"],
        "best_val_ndcg@10": best["val_ndcg@10"],
        "best_params": best["params"],
        "report": str(study_dir / "report.md"),
    }
    return entry, summary


def _refit_entry(refit: dict | None) -> dict | None:
    """A run's refit on TRAIN + VALID (training/refit): its epochs, time and test figures."""
    if not refit:
        return None
    return {k: refit[k] for k in ("epochs", "fit_seconds", "test")}


def refit_run(run: dict) -> dict:
    """Refit a finished run that was trained without --refit, in this process, from its run
    dir's config.yaml and best epoch, as `recstack train --refit true` would have."""
    import yaml

    from recstack.training.run_report import METRICS_FILE, add_refit
    from recstack.training.train_cli import refit

    run_dir = Path(run["run_dir"])
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    report = refit(config, run_dir, run["best_epoch"] + 1)
    add_refit(run_dir, json.loads((run_dir / METRICS_FILE).read_text()), report)
    return {**run, "refit": _refit_entry(report)}


def recipe(run: dict) -> str:
    """The model and its recipe label: runs of one recipe are the seeds of one mean."""
    return run["model"] + (f"-{run['label']}" if run.get("label") else "")


def run_pipeline(dataset: dict, runs: dict, seed: int, root: Path) -> dict:
    """The served pipeline on this dataset: the seed's two-tower (retriever, top 100) and
    SASRec (ranker) runs exported from their best checkpoints, then `recstack eval artifacts`
    on the test targets, beside SASRec's own full ranking of the same users."""
    keys = {"retriever": f"two_tower-seed{seed}", "ranker": f"sasrec-seed{seed}"}
    missing = [key for key in keys.values() if key not in runs or runs[key]["truncated"]]
    if missing:
        raise SystemExit(f"{dataset['name']}: no complete runs {missing}; train them first")
    folder = root / dataset["name"] / "pipeline"
    artifacts = {}
    for role, key in keys.items():
        artifacts[role] = folder / key
        checkpoint = Path(runs[key]["run_dir"]) / "checkpoints" / "best.ckpt"
        command = [recstack_bin(), "export", "--ckpt", str(checkpoint), "--out", str(folder / key)]
        command += ["--overwrite", "true"]  # a rerun exports again
        run_logged(command, folder / f"export-{key}.log")
    out = folder / f"pipeline-seed{seed}.json"
    command = [recstack_bin(), "eval", "artifacts", "--retriever", str(artifacts["retriever"])]
    command += ["--ranker", str(artifacts["ranker"]), "--dataset", dataset["path"]]
    command += ["--out", str(out)]
    process = run_logged(command, folder / f"pipeline-seed{seed}.log")
    report = json.loads(out.read_text())
    return {
        **keys,
        "retrieve_n": report["retrieve_n"],
        "pipeline": report["pipeline"],
        "ranker_full": report["ranker_full"],
        "pipeline_over_full": report["pipeline_over_full"],
        "retrieval": report["retrieval"],
        "seconds": report["seconds"],
        "process": process,
    }


def summarise_models(runs: dict) -> dict:
    """Per recipe, over its complete (not truncated) runs: mean ± std of the test metrics of
    the validated model, and of the refit model where every run has one (`refit`)."""
    recipes: dict = {}
    for run in runs.values():
        recipes.setdefault(recipe(run), []).append(run)
    summary = {}
    for name, entries in recipes.items():
        complete = [r for r in entries if not r["truncated"]]
        refits = [r["refit"]["test"] for r in complete if r.get("refit")]
        summary[name] = {
            "complete_runs": [r["key"] for r in complete],
            "truncated_runs": [r["key"] for r in entries if r["truncated"]],
            **(summarise([r["test"] for r in complete]) if complete else {}),
            "refit": summarise(refits) if complete and len(refits) == len(complete) else None,
        }
    return summary


def targets(entry: dict) -> dict:
    """The issue's targets against what is measured so far (None until measured)."""
    anchor = entry["anchor"][METRIC]
    baselines = (entry.get("baselines") or {}).get("models", {})
    scores = {
        name: m["metrics"][METRIC]
        for name, m in baselines.items()
        if name in ("Markov", "EASE") and m.get("metrics")
    }
    best = max(scores.items(), key=lambda kv: kv[1]) if scores else (None, None)
    result = {
        "anchor_ndcg@10": anchor,
        "anchor_target": round(ANCHOR_FACTOR * anchor, 4),
        "best_baseline": best[0],
        "best_baseline_ndcg@10": best[1],
        "baseline_target": round(BASELINE_FACTOR * best[1], 4) if best[1] else None,
        "baselines_vs_anchor": {
            name: round(m["metrics"][METRIC] / anchor, 3)
            for name, m in baselines.items()
            if m.get("metrics")
        },
        "models": {},
    }
    # The anchor was trained on TRAIN only: the validated model's test compares with it. The
    # baselines are fitted on TRAIN + VALID for the test: the refit's test compares with them.
    for model, summary in (entry.get("summary") or {}).items():
        mean = summary.get("mean", {}).get(METRIC)
        refit = ((summary.get("refit") or {}).get("mean") or {}).get(METRIC)
        result["models"][model] = {
            "mean_ndcg@10": mean,
            "refit_mean_ndcg@10": refit,
            "n_seeds": len(summary["complete_runs"]),
            "vs_anchor": round(mean / anchor, 3) if mean else None,
            "meets_anchor_target": mean >= ANCHOR_FACTOR * anchor if mean else None,
            "vs_best_baseline": round(mean / best[1], 3) if mean and best[1] else None,
            "refit_vs_best_baseline": round(refit / best[1], 3) if refit and best[1] else None,
            "meets_baseline_target": refit >= BASELINE_FACTOR * best[1]
            if refit and best[1]
            else None,
        }
    pipeline = entry.get("pipeline")
    if pipeline:
        ratio = pipeline["pipeline_over_full"][METRIC]
        result["pipeline_over_full"] = ratio
        result["meets_pipeline_target"] = ratio >= PIPELINE_FACTOR
    return result


FINE_EDGES = (1, 4, 5, 6, 7, 8, 10, 15, 20, 50)  # Amazon histories are short (median ~6)


def analyse(dataset: dict, run: dict) -> dict:
    """SASRec (a run's best checkpoint) vs Markov on the same test targets, per user.

    - per history length, finer than the evaluator's default buckets (recstack/segments.py);
    - by the last-item signal: whether the (last history item -> target) transition occurs in
      the history events (what first-order Markov can score at all), and whether it occurs
      among TRAIN events or only among VALID ones (which only a refit model trained on);
    - SASRec given only the last 1 or 3 history items (how much of its score is first-order);
    - hit overlap at 10 between the two;
    - the run's refit model beside them, when it has one.
    """
    from recstack.dataset_dir import load_dataset
    from recstack.datasets.splits import apply_split
    from recstack.eval_set import build_eval_set, history_frame
    from recstack.schema import SPLIT, TRAIN
    from recstack.segments import segment_metrics, segments_to_dict
    from recstack.training.eval.baselines import Markov
    from recstack.training.eval.evaluator import evaluate
    from recstack.training.tasks.next_item import NextItemTask

    data = load_dataset(Path(dataset["path"]))
    frame = apply_split(data.interactions, "loo")
    test_set = build_eval_set(frame, "test", data.n_items)
    history = history_frame(frame, "test")
    markov = Markov().fit(history, data.n_items)

    def net(checkpoint: Path):
        task = NextItemTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
        return task.net.eval()

    def sasrec(model, width: int):
        return lambda batch: model.score_all(*batch.recent(width))

    best = net(Path(run["run_dir"]) / "checkpoints" / "best.ckpt")
    results = {"Markov": evaluate(markov, test_set, device="cpu")}
    for width in (best.config.history_len, 3, 1):
        name = "SASRec" if width == best.config.history_len else f"SASRec last {width}"
        results[name] = evaluate(sasrec(best, width), test_set, device="cpu")
    refit = Path(run["run_dir"]) / "refit" / "checkpoints" / "last.ckpt"
    if refit.is_file():
        refit_net = net(refit)
        results["SASRec refit"] = evaluate(
            sasrec(refit_net, refit_net.config.history_len), test_set, device="cpu"
        )
    # The last-item signal: does the (last history item -> target) pair occur in the history,
    # among TRAIN events (a pair counts as TRAIN when its second event is) or only VALID ones?
    pairs = history.select(
        pl.col("item_idx").shift(1).over("user_idx").alias("prev"), pl.col("item_idx"), SPLIT
    ).drop_nulls()

    def pair_set(frame: pl.DataFrame) -> set:
        return set(zip(frame["prev"].to_list(), frame["item_idx"].to_list(), strict=True))

    seen, seen_train = pair_set(pairs), pair_set(pairs.filter(pl.col(SPLIT) == TRAIN))
    for result in results.values():
        assert np.array_equal(result.users, test_set.users)  # per-user arrays line up
    last = test_set.history_items[test_set.history_indptr[1:] - 1]
    first_target = test_set.target_items[test_set.target_indptr[:-1]]
    query = [(int(a), int(b)) for a, b in zip(last, first_target, strict=True)]
    known = np.array([q in seen for q in query], dtype=bool)
    in_train = np.array([q in seen_train for q in query], dtype=bool)
    by_signal = {}
    groups = (
        ("transition seen", known),
        ("seen among TRAIN events", in_train),
        ("seen only among VALID events", known & ~in_train),
        ("transition unseen", ~known),
    )
    for label, keep in groups:
        by_signal[label] = {
            "n_users": int(keep.sum()),
            **{
                name: {m: float(r.per_user[m][keep].mean()) for m in ("ndcg@10", "hr@10")}
                for name, r in results.items()
            },
        }
    hit_s = results["SASRec"].per_user["hr@10"] > 0
    hit_m = results["Markov"].per_user["hr@10"] > 0
    return {
        "run": run["key"],
        "truncated": run["truncated"],
        "test": {name: r.metrics for name, r in results.items()},
        "activity_fine": {
            name: segments_to_dict(segment_metrics(r, None, activity_edges=FINE_EDGES))["activity"]
            for name, r in results.items()
        },
        "last_item_signal": by_signal,
        "hits@10_overlap": {
            "both": int((hit_s & hit_m).sum()),
            "only_sasrec": int((hit_s & ~hit_m).sum()),
            "only_markov": int((~hit_s & hit_m).sum()),
            "neither": int((~hit_s & ~hit_m).sum()),
        },
    }


# loss variants a step is timed with: (LossConfig fields, bf16 autocast); None = no loss
STEP_VARIANTS = {
    "full_ce": ({"kind": "ce"}, False),
    "full_ce_bf16": ({"kind": "ce"}, True),
    "sampled_256_logq": ({"kind": "sampled", "n_negatives": 256}, False),
    "sampled_1024_logq": ({"kind": "sampled", "n_negatives": 1024}, False),
    "net_only": (None, False),
}


def _time_steps(name: str, data: list, n_items: int, config: dict, seed: int) -> float:
    """ms per SASRec training step (forward, backward, AdamW) over `data` with loss `name`."""
    from recstack.schema import PAD_IDX
    from recstack.training.losses import LossConfig, RecLoss
    from recstack.training.models.sasrec import SASRec, SASRecConfig

    loss_fields, bf16 = STEP_VARIANTS[name]
    torch.manual_seed(seed)
    net = SASRec(SASRecConfig(n_items=n_items, **config))
    loss_fn = RecLoss(LossConfig(**loss_fields), n_items) if loss_fields else None
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step(items: torch.Tensor, targets: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = net(items)
            keep = targets != PAD_IDX
            if loss_fn is None:  # no item vectors: the network's own cost
                loss = hidden[keep].float().square().mean()
            else:
                loss = loss_fn(hidden[keep], targets[keep], net.item_vectors)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for items, targets in data[:3]:  # warm-up
        step(items, targets)
    started = time.perf_counter()
    for items, targets in data:
        step(items, targets)
    return round((time.perf_counter() - started) / len(data) * 1000, 2)


def profile_steps(dataset: dict, steps: int = 40, batch_size: int = 64, seed: int = 0) -> dict:
    """Where a SASRec training step's time goes on this dataset (CPU, plain PyTorch).

    Batches are the TRAIN sequences of random users, length-sorted in pools of 16 batches and
    padded to the longest in the batch, as training's EpochSampler does; model sizes are the
    shipped config's. Per step (forward, backward, AdamW), ms for each of STEP_VARIANTS: the
    full CE over the catalogue (the config's loss) in float32 and under bf16 autocast, sampled
    softmax with 256 or 1024 uniform negatives and logQ, and the network alone (a loss that
    touches no item vectors), so CE's share = 1 - net / full. Inputs are identical across all.
    """
    import yaml

    from recstack.schema import PAD_IDX

    config = yaml.safe_load(CONFIGS["sasrec"].read_text())["model"]["init_args"]["model"]
    frame = pl.read_parquet(
        Path(dataset["path"]) / "interactions.parquet",
        columns=["user_idx", "item_idx", "split_loo"],
    ).filter(pl.col("split_loo") == 0)
    seqs = frame.group_by("user_idx", maintain_order=True).agg("item_idx")["item_idx"].to_list()
    seqs = [q[-(config["history_len"] + 1) :] for q in seqs if len(q) >= 2]
    n_items = int(dataset["counts"]["items"])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(seqs))
    pool = batch_size * 16
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(seqs[i]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    picked = [batches[i] for i in rng.permutation(len(batches))[:steps]]

    def tensors(batch):
        width = max(len(seqs[i]) for i in batch) - 1
        items = torch.full((len(batch), width), PAD_IDX, dtype=torch.long)
        targets = torch.full_like(items, PAD_IDX)
        for row, i in enumerate(batch):
            q = torch.tensor(seqs[i])
            items[row, : len(q) - 1], targets[row, : len(q) - 1] = q[:-1], q[1:]
        return items, targets

    data = [tensors(b) for b in picked]
    results = {name: _time_steps(name, data, n_items, config, seed) for name in STEP_VARIANTS}
    tokens = sum(int((t != PAD_IDX).sum()) for _, t in data) / len(data)
    padded = sum(t.numel() for _, t in data) / len(data)
    batches_per_epoch = -(-len(seqs) // batch_size)
    return {
        "ms_per_step": results,
        "ce_share_of_step": round(1 - results["net_only"] / results["full_ce"], 3),
        "steps_measured": len(data),
        "batch_size": batch_size,
        "targets_per_batch": round(tokens, 1),
        "padded_positions_per_batch": round(padded, 1),
        "batches_per_epoch": batches_per_epoch,
        "estimated_train_s_per_epoch": {
            k: round(v * batches_per_epoch / 1000, 1) for k, v in results.items()
        },
        "model": config,
        "n_items": n_items,
        "threads": torch.get_num_threads(),
    }


def _f(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(entry: dict) -> str:
    """The README's tables for one dataset, from its JSON (benchmarks/README.md, Amazon)."""
    name, anchor = entry["dataset"]["name"], entry["anchor"]
    cols = ("ndcg@10", "hr@10", "ndcg@20", "hr@20")
    head = "| model | runs | NDCG@10 | HR@10 | NDCG@20 | HR@20 | NDCG@10 / anchor | note |"
    lines = [head, "|" + "---|" * 8]

    def row(label, runs, metrics, spread=None, note=""):
        cells = [
            _f(metrics.get(c)) + (f" ± {spread[c]:.4f}" if spread and c in spread else "")
            for c in cols
        ]
        ratio = metrics.get(METRIC) / anchor[METRIC] if metrics.get(METRIC) else None
        lines.append(f"| {label} | {runs} | {' | '.join(cells)} | {_f(ratio, 2)}× | {note} |")

    row("ICLRec (published anchor)", "–", anchor, note="target 1.3×")
    for model, summary in (entry.get("summary") or {}).items():
        n = len(summary["complete_runs"])
        if summary.get("mean"):
            std = summary.get("std") if n > 1 else None
            row(model, n, summary["mean"], std, "TRAIN only; mean ± std over seeds")
        if summary.get("refit"):
            refit = summary["refit"]
            note = "refit on TRAIN + VALID for the validated epoch count, as the baselines"
            row(f"{model} refit", n, refit["mean"], refit.get("std") if n > 1 else None, note)
    for key, run in (entry.get("runs") or {}).items():
        if run["truncated"]:
            note = f"**truncated** at {run['epochs_trained']} epochs: not a final figure"
            row(key, 1, run["test"], note=note)
    for model, base in (entry.get("baselines") or {}).get("models", {}).items():
        if base.get("metrics"):
            note = ", ".join(f"{k} {v:g}" for k, v in base.get("hyperparameters", {}).items())
            row(f"{model} (baseline)", 1, base["metrics"], note=note)
        else:
            lines.append(f"| {model} (baseline) | – | | | | | | {base.get('skipped')} |")
    out = [
        f"`amazon_{name}.json` ({entry['dataset']['counts']}; manifest "
        f"`{entry['dataset']['manifest_hash'][:12]}`): test, LOO, full ranking",
        "",
        *lines,
    ]
    for model, study in (entry.get("tune") or {}).items():
        states = ", ".join(f"{n} {state}" for state, n in study["states"].items())
        default = study.get("default_trial") or {}
        out += [
            "",
            f"`{model}-tuned`: `recstack tune` (`{study['search']}`, study `{study['study']}`: "
            f"{study['trials']} trials, {states}, {study['wall_minutes']} min), best trial "
            f"{study['best_trial']} (val NDCG@10 {_f(study['best_val_ndcg@10'])}; the shipped "
            f"config as trial {default.get('number')}: {_f(default.get('val_ndcg@10'))}): "
            + ", ".join(f"{k.split('.')[-1]} {v:.4g}" if isinstance(v, float) else
                        f"{k.split('.')[-1]} {v}" for k, v in study["best_params"].items()),
        ]  # fmt: skip
    pipeline = entry.get("pipeline")
    if pipeline:
        n, ratio = pipeline["retrieve_n"], pipeline["pipeline_over_full"][METRIC]
        out += [
            "",
            f"Served pipeline ({pipeline['retriever']} top {n} → {pipeline['ranker']}, "
            f"`recstack eval artifacts`, test): NDCG@10 {_f(pipeline['pipeline'][METRIC])} "
            f"against the ranker's full ranking {_f(pipeline['ranker_full'][METRIC])}: "
            f"**{ratio:.3f}×** (target ≥ {PIPELINE_FACTOR}×); retrieval recall@{n} "
            f"{_f(pipeline['retrieval'][f'recall@{n}'])}.",
        ]
    baselines = (entry.get("baselines") or {}).get("models", {})
    if baselines:
        out += ["", "| baseline | fit s | λ selection s | eval s | process peak RSS MiB |"]
        out += ["|---|---|---|---|---|"]
        rss = entry["baselines"]["process"]["peak_rss_mib"]
        for model, base in baselines.items():
            t = {k: f"{v:.1f}" for k, v in base.get("timings", {}).items()}
            shown = rss if model == "EASE" and base.get("metrics") else ""
            out.append(
                f"| {model} | {t.get('fit_s', '–')} | {t.get('select_s', '–')} | "
                f"{t.get('eval_s', '–')} | {shown} |"
            )
    runs = entry.get("runs") or {}
    if runs:
        out += [
            "",
            "| run | epochs | best epoch | s/epoch (train + validation) | "
            "val NDCG@10 by epoch | time to anchor NDCG@10 (validation) | peak RSS MiB |",
        ]
        out += ["|---|---|---|---|---|---|---|"]
        for key, run in runs.items():
            trajectory = " → ".join(_f(e["ndcg@10"]) for e in run["epochs"])
            ttq = run["time_to_quality"]
            reach = (
                f"epoch {ttq['epoch']}, {ttq['wall_s']:.0f} s"
                if ttq["epoch"] is not None
                else "not reached"
            )
            out.append(
                f"| {key}{' (truncated)' if run['truncated'] else ''} | {run['epochs_trained']} | "
                f"{run['best_epoch']} | {run['mean_epoch_s']} | {trajectory} | {reach} | "
                f"{run['process']['peak_rss_mib']} |"
            )
    analysis = entry.get("analysis")
    if analysis:
        models = list(analysis["test"])
        out += [
            "",
            f"SASRec vs Markov per user ({analysis['run']}"
            f"{', truncated' if analysis['truncated'] else ''}): test NDCG@10 by history length",
        ]
        out += ["", "| history length | users | " + " | ".join(models) + " |"]
        out += ["|---|---|" + "---|" * len(models)]
        fine = analysis["activity_fine"]
        for bucket, cell in fine["Markov"].items():
            vals = " | ".join(_f(fine[m].get(bucket, {}).get(METRIC)) for m in models)
            out.append(f"| {bucket} | {cell['n_users']} | {vals} |")
        out += ["", "| (last item → target) in the history | users | " + " | ".join(models) + " |"]
        out += ["|---|---|" + "---|" * len(models)]
        for label, cell in analysis["last_item_signal"].items():
            vals = " | ".join(_f(cell[m][METRIC]) for m in models)
            out.append(f"| {label} | {cell['n_users']} | {vals} |")
        out += ["", f"Hits@10: {analysis['hits@10_overlap']}"]
    return "\n".join(out)


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


# sections every stage writes; the others belong to the stage of the same name
COMMON_SECTIONS = ("dataset", "anchor", "protocol", "machine")
STAGE_SECTIONS = {
    "baselines": "baselines",
    "tune": "tune",
    "pipeline": "pipeline",
    "analysis": "analysis",
    "profile": "step_profile",
}


def write_entry(out: Path, entry: dict, changed: dict, stages: list[str]) -> None:
    """Write the file as it is now (another job may have written to it since this one read it)
    with the sections of this job's `stages` and the runs it `changed` taken from `entry`; the
    summary and targets are recomputed over all runs. `entry` becomes what was written."""
    written = json.loads(out.read_text()) if out.exists() else {}
    mine = [*COMMON_SECTIONS, *(STAGE_SECTIONS[s] for s in stages if s in STAGE_SECTIONS)]
    merged = {**entry, **written, **{k: entry[k] for k in mine if k in entry}}
    merged["runs"] = {**entry.get("runs", {}), **written.get("runs", {}), **changed}
    merged["summary"] = summarise_models(merged["runs"])
    entry.clear()
    entry.update(merged)
    entry["targets"] = targets(entry)
    write_json(out, entry)


def print_summary(console: Console, entry: dict) -> None:
    rows = {"anchor (ICLRec)": {k: v for k, v in entry["anchor"].items() if k != "source"}}
    for name, model in (entry.get("baselines") or {}).get("models", {}).items():
        rows[name] = model.get("metrics")
    for key, run in entry.get("runs", {}).items():
        rows[key + (" (truncated)" if run["truncated"] else "")] = run["test"]
        if run.get("refit"):
            rows[f"{key} refit"] = run["refit"]["test"]
    title = f"{entry['dataset']['name']}: test, full ranking, LOO"
    console.print(metrics_table(title, rows, table_columns((10, 20), False)))


def amazon_quality(
    data: Path | None = None,
    datasets: list[str] = ["beauty", "sports"],  # noqa: B006 - read only
    stages: list[str] = ["baselines", "train"],  # noqa: B006 - read only
    models: list[str] = ["sasrec", "two_tower"],  # noqa: B006 - read only
    seeds: list[int] = [0, 1, 2],  # noqa: B006 - read only
    max_epochs: int | None = None,
    label: str | None = None,
    test_tie_orders: int = 1,
    overrides: list[str] | None = None,
    refit: bool = True,
    resume: bool = False,
    n_trials: int = 12,
    tune_timeout_s: float | None = None,
    ease_lambdas: list[float] | None = None,
    ease_max_items: int | None = None,
    analysis_run: str | None = None,
    runs: Path = ROOT / "runs" / "amazon",
    out_dir: Path = RESULTS,
) -> dict:
    """Prepare the Amazon logs, run the stages, and update benchmarks/results/amazon_<d>.json.

    Args:
        data: folder with Beauty.txt and Sports_and_Outdoors.txt; default ../shared/data/amazon.
        datasets: any of "beauty", "sports".
        stages: any of "baselines", "train", "tune" (`recstack tune` per model with the shipped
            search space; the best trial is the run `<model>-seed0-tuned`), "refit" (refit the finished runs that have no
            refit yet), "pipeline" (the first seed's two-tower -> SASRec served pipeline vs
            SASRec's full ranking), "analysis" (SASRec vs Markov per user), "table"
            (print the README's markdown tables from the JSON), "profile" (where a SASRec step's
            time goes: full CE vs sampled softmax vs the network alone).
        models: any of "sasrec", "two_tower" (configs/train/<model>_ml100k.yaml, unchanged).
        seeds: values of seed_everything for the train stage.
        max_epochs: override the config's epoch limit (a run it stops is marked truncated).
        label: suffix of the run keys (e.g. "cpu-3ep"), so short runs do not replace full ones;
            with the refit stage, refit only the runs of that label.
        test_tie_orders: final scoring orders (1: seqlines data has no equal timestamps).
        overrides: extra `recstack train` arguments for a recipe variant, e.g.
            '[--model.init_args.model.dim, "128"]'; needs a `label`, so that a variant's runs
            never stand in for the shipped config's.
        refit: train stage: `recstack train --refit true`, so each run also reports the test
            of its config refitted on TRAIN + VALID events (what the baselines are fitted on).
        resume: train stage: a run whose dir holds a last.ckpt (a stopped job) resumes from
            it (`--ckpt_path last`, exact resume) instead of starting over.
        n_trials: tune stage: finished trials the study should reach (`recstack tune
            --n-trials`; run again with a higher value to add trials to the same study).
        tune_timeout_s: tune stage: start no new trial after this many seconds.
        ease_lambdas: EASE λ grid (default: the evaluator's 10 ... 2500).
        ease_max_items: skip EASE above this many items (default: the evaluator's 20,000).
        analysis_run: the SASRec run key to analyse (default: the last in the JSON's runs).
        runs: prepared datasets, baseline reports and run dirs.
        out_dir: where amazon_<dataset>.json is written.
    """
    data = Path(data) if data is not None else DEFAULT_DATA
    if not data.is_dir():
        raise SystemExit(f"no Amazon data at {data}; pass --data DIR (Beauty.txt, Sports_...txt)")
    unknown = (set(datasets) - set(DATASETS)) | (set(stages) - set(STAGES))
    unknown |= set(models) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown dataset, stage or model: {sorted(unknown)}")
    if overrides and not label:
        raise SystemExit("--overrides changes the recipe: give the runs a --label too")
    console = Console(width=200)
    results = {}
    for name in datasets:
        out = Path(out_dir) / f"amazon_{name}.json"
        entry = json.loads(out.read_text()) if out.exists() else {}
        dataset = dataset_entry(name, data, Path(runs))
        if entry.get("dataset", {}).get("manifest_hash") not in (None, dataset["manifest_hash"]):
            entry = {}  # another version of the data: the old figures no longer apply
        entry.update(
            {
                "dataset": dataset,
                "anchor": DATASETS[name]["anchor"],
                "protocol": "leave-one-out by position, full ranking over all items, "
                "the user's earlier items masked (docs/architecture.md §5)",
            }
        )
        if set(stages) - {"table"}:  # printing the tables measures nothing
            entry["machine"] = machine()
        if "baselines" in stages:
            console.print(f"{name}: baselines ...")
            entry["baselines"] = run_baselines(dataset, Path(runs), ease_lambdas, ease_max_items)
        changed: dict = {}  # the runs this process trained or refitted
        if "train" in stages:
            for model in models:
                for seed in seeds:
                    console.print(f"{name}: training {model} seed {seed} ...")
                    run = run_train(
                        dataset,
                        model,
                        seed,
                        Path(runs),
                        max_epochs,
                        label,
                        test_tie_orders,
                        overrides or [],
                        refit,
                        resume,
                    )
                    changed[run["key"]] = run
                    write_entry(out, entry, changed, stages)  # a stopped job keeps what it did
        if "tune" in stages:
            for model in models:
                console.print(f"{name}: tuning {model} ({n_trials} trials) ...")
                run, study = run_tune(dataset, model, Path(runs), n_trials, tune_timeout_s)
                entry.setdefault("tune", {})[model] = study
                changed[run["key"]] = run
                write_entry(out, entry, changed, stages)
        if "refit" in stages:  # runs trained without --refit: refit them here
            for key, run in list(entry.get("runs", {}).items()):
                mine = run["model"] in models and label in (None, run.get("label"))
                if mine and not run["truncated"] and not run.get("refit"):
                    console.print(f"{name}: refitting {key} on train + valid ...")
                    changed[key] = refit_run(run)
                    write_entry(out, entry, changed, stages)
        if "pipeline" in stages:
            console.print(f"{name}: the served pipeline (two-tower top 100 -> SASRec) ...")
            entry["pipeline"] = run_pipeline(dataset, entry.get("runs", {}), seeds[0], Path(runs))
            write_entry(out, entry, changed, stages)
        if "analysis" in stages:
            keys = [k for k, r in entry.get("runs", {}).items() if r["model"] == "sasrec"]
            key = analysis_run or (keys[-1] if keys else None)
            if key is None:
                raise SystemExit(f"{name}: no SASRec run to analyse; run the train stage first")
            console.print(f"{name}: SASRec ({key}) vs Markov per user ...")
            entry["analysis"] = analyse(dataset, entry["runs"][key])
        if "profile" in stages:
            console.print(f"{name}: timing SASRec steps ...")
            entry["step_profile"] = profile_steps(dataset)
            console.print(entry["step_profile"])
        write_entry(out, entry, changed, stages)
        print_summary(console, entry)
        if "table" in stages:
            print(markdown(entry) + "\n")
        console.print(f"[dim]wrote {out}[/dim]")
        results[name] = entry
    return results


if __name__ == "__main__":
    auto_cli(amazon_quality, as_positional=False)
