"""`recstack eval baselines`: MostPop, EASE and Markov on a prepared dataset's test targets.

Protocol (docs/architecture.md §5): every model is fitted on TRAIN + VALID events and ranked over
the whole catalogue for each user's TEST targets; EASE's λ is chosen on the VALID targets with EASE fitted
on TRAIN only, then refitted. With tie shuffles the whole protocol is repeated on splits whose
equal-timestamp events are reordered by seeds 0..N-1.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from rich.console import Console

from recstack.datasets.splits import apply_split
from recstack.errors import RecstackError
from recstack.eval_report import (
    metrics_table,
    segment_table,
    summarise,
    table_columns,
    write_json,
)
from recstack.eval_set import build_eval_set, history_frame
from recstack.manifest import CONTENT_HASH
from recstack.segments import segment_metrics, segments_to_dict
from recstack.training.eval.baselines import (
    EASE,
    EASE_L2_GRID,
    EASE_MAX_ITEMS,
    SELECTION_METRIC,
    Markov,
    MostPop,
    select_ease_l2,
)
from recstack.training.eval.evaluator import EvalResult, evaluate, resolve_device


@dataclass
class ModelRun:
    """One baseline on one split: its result, or why it was skipped."""

    result: EvalResult | None
    hyperparameters: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    selection: dict | None = None
    skipped: str | None = None

    @property
    def metrics(self) -> dict[str, float] | None:
        return None if self.result is None else self.result.metrics


def _timed_eval(model, history, n_items, eval_set, ks, device, sampled, seed) -> tuple:
    started = time.perf_counter()
    model.fit(history, n_items)
    fitted = time.perf_counter()
    result = evaluate(model, eval_set, ks=ks, device=device, sampled=sampled, seed=seed)
    timings = {
        "fit_s": round(fitted - started, 4),
        "eval_s": round(time.perf_counter() - fitted, 4),
    }
    return result, timings


def evaluate_baselines(
    interactions: pl.DataFrame,
    n_items: int,
    split: str = "loo",
    ks: Sequence[int] = (10, 20),
    tie_seed: int | None = None,
    sampled: int | None = None,
    seed: int = 0,
    device=None,
    ease_lambdas: Sequence[float] | None = None,
    ease_max_items: int = EASE_MAX_ITEMS,
) -> tuple[dict[str, ModelRun], dict]:
    """Run every baseline once on the test targets of `split` (tie order from `tie_seed`).

    Returns ({model: ModelRun}, facts about the evaluation sets).
    """
    device = resolve_device(device)
    frame = apply_split(interactions, split, tie_seed=tie_seed)
    test_set = build_eval_set(frame, "test", n_items)
    if test_set.n_users == 0:
        raise RecstackError(f"the {split!r} split has no test targets; check the dataset's split")
    test_history = history_frame(frame, "test")
    runs: dict[str, ModelRun] = {}
    common = {"ks": ks, "device": device, "sampled": sampled, "seed": seed}

    result, timings = _timed_eval(MostPop(), test_history, n_items, test_set, **common)
    runs[MostPop.name] = ModelRun(result, {}, timings)

    lambdas = list(EASE_L2_GRID if not ease_lambdas else ease_lambdas)
    try:
        EASE(max_items=ease_max_items).check_catalogue(n_items)
        started = time.perf_counter()
        valid_set = build_eval_set(frame, "valid", n_items)
        if len(lambdas) == 1 and valid_set.n_users == 0:
            best, curve = float(lambdas[0]), {}
        else:
            best, curve = select_ease_l2(
                history_frame(frame, "valid"), valid_set, lambdas, ease_max_items, device
            )
        select_s = round(time.perf_counter() - started, 4)
        model = EASE(l2=best, max_items=ease_max_items, device=device)
        result, timings = _timed_eval(model, test_history, n_items, test_set, **common)
        selection = {
            "metric": SELECTION_METRIC,
            "target": "valid",
            "n_users": valid_set.n_users,
            "curve": curve,
        }
        runs[EASE.name] = ModelRun(
            result, model.hyperparameters(), {"select_s": select_s, **timings}, selection
        )
    except RecstackError as exc:
        runs[EASE.name] = ModelRun(None, skipped=str(exc))

    result, timings = _timed_eval(Markov(), test_history, n_items, test_set, **common)
    runs[Markov.name] = ModelRun(result, {}, timings)
    facts = {
        "n_users": test_set.n_users,
        "n_targets": int(test_set.target_items.shape[0]),
        "n_users_dropped_no_history": test_set.n_users_dropped_no_history,
        "n_targets_dropped_seen": test_set.n_targets_dropped_seen,
    }
    return runs, facts


def baselines_report(
    dataset,
    split: str = "loo",
    ks: Sequence[int] = (10, 20),
    tie_shuffles: int = 0,
    sampled: int | None = None,
    out: Path | None = None,
    device=None,
    ease_lambdas: Sequence[float] | None = None,
    ease_max_items: int = EASE_MAX_ITEMS,
    seed: int = 0,
    console: Console | None = None,
) -> dict:
    """`run_baselines` on an already loaded dataset (anything with interactions, users, n_items,
    manifest and path attributes, like `PreparedDataset`)."""
    started = time.perf_counter()
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: do not squeeze the table to 80 columns
            console = Console(width=200)
    ks = sorted({int(k) for k in ks})
    device = resolve_device(device)
    options = {
        "split": split,
        "ks": ks,
        "sampled": sampled,
        "seed": seed,
        "device": device,
        "ease_lambdas": ease_lambdas,
        "ease_max_items": ease_max_items,
    }
    notes = []
    if tie_shuffles and split != "loo":
        notes.append(f"tie shuffles skipped: the {split} split does not depend on tie order")
        tie_shuffles = 0
    runs, facts = evaluate_baselines(dataset.interactions, dataset.n_items, **options)
    shuffled = [
        evaluate_baselines(dataset.interactions, dataset.n_items, tie_seed=s, **options)[0]
        for s in range(tie_shuffles)
    ]

    models: dict[str, dict] = {}
    for name, run in runs.items():
        entry: dict = {"metrics": run.metrics, "hyperparameters": run.hyperparameters}
        if run.skipped:
            entry["skipped"] = run.skipped
        else:
            table = segment_metrics(run.result, dataset.users)
            entry["segments"] = segments_to_dict(table)
            if run.selection is not None:
                entry["selection"] = run.selection
        entry["timings"] = run.timings
        seeded = [s[name] for s in shuffled if s[name].metrics is not None]
        if seeded:
            entry["tie_shuffles"] = {
                "seeds": list(range(tie_shuffles)),
                **summarise([s.metrics for s in seeded]),
                "hyperparameters": [s.hyperparameters for s in seeded],
            }
        models[name] = entry

    manifest = getattr(dataset, "manifest", None) or {}
    path = Path(getattr(dataset, "path", "."))
    payload = {
        "dataset": str(path),
        "manifest_hash": manifest.get(CONTENT_HASH),
        "split": split,
        "target": "test",
        "ks": ks,
        "sampled": sampled,
        "seeds": {"sampled_negatives": seed, "tie_shuffles": list(range(tie_shuffles))},
        "device": str(device),
        "n_items": dataset.n_items,
        "eval": facts,
        "models": models,
        "notes": notes,
        "timings": {"total_s": round(time.perf_counter() - started, 3)},
    }
    out = Path("runs") / "baselines" / f"{path.name}-{split}.json" if out is None else Path(out)
    write_json(out, payload)
    _print(console, payload, runs, shuffled, ks, out)
    payload["out"] = str(out)
    return payload


def _print(console: Console, payload: dict, runs, shuffled, ks, out: Path) -> None:
    show_recall = payload["eval"]["n_targets"] > payload["eval"]["n_users"]
    columns = table_columns(ks, show_recall)
    notes = {name: run.skipped for name, run in runs.items() if run.skipped}
    facts = payload["eval"]
    title = (
        f"Baselines — {payload['split']} split, test, full ranking over {payload['n_items']} "
        f"items, {facts['n_users']} users"
    )
    console.print(
        metrics_table(title, {n: r.metrics for n, r in runs.items()}, columns, None, notes)
    )
    if shuffled:
        models = payload["models"]
        rows = {n: models[n].get("tie_shuffles", {}).get("mean") for n in runs}
        spread = {n: models[n]["tie_shuffles"]["std"] for n in runs if rows[n] is not None}
        title = f"Mean ± std over {len(shuffled)} tie shuffles"
        console.print(metrics_table(title, rows, columns, spread, notes))
    console.print(segment_table(payload["models"], f"ndcg@{ks[0]}"))
    ease = payload["models"].get(EASE.name, {})
    if ease.get("hyperparameters"):
        console.print(f"EASE λ = {ease['hyperparameters']['l2']:g} (chosen on validation NDCG@10)")
    if facts["n_users_dropped_no_history"] or facts["n_targets_dropped_seen"]:
        console.print(
            f"[dim]not evaluated: {facts['n_users_dropped_no_history']} users without history, "
            f"{facts['n_targets_dropped_seen']} targets already in the user's history[/dim]"
        )
    for note in payload["notes"]:
        console.print(f"[yellow]{note}[/yellow]")
    console.print(f"[dim]wrote {out}[/dim]", soft_wrap=True)


def run_baselines(
    dataset: Path,
    split: str = "loo",
    ks: list[int] = [10, 20],  # noqa: B006 - never mutated; a list default reads well in --help
    tie_shuffles: int = 0,
    sampled: int | None = None,
    out: Path | None = None,
    device: str | None = None,
    ease_lambdas: list[float] | None = None,
    ease_max_items: int = EASE_MAX_ITEMS,
    seed: int = 0,
) -> dict:
    """Evaluate the reference baselines (MostPop, EASE, Markov) on a prepared dataset.

    Full ranking over the whole catalogue on the test targets, seen items masked; EASE's λ is
    chosen by validation NDCG@10 and the model refitted on train + validation. Prints a table
    and writes a JSON report with metrics, per-segment metrics, chosen hyper-parameters,
    the dataset's manifest hash, seeds and timings.

    Args:
        dataset: prepared dataset directory (from `recstack data prepare`).
        split: "loo" (leave-one-out by time per user) or "temporal" (one global time cut).
        ks: cut-offs for HR/Recall/NDCG/MRR and the beyond-accuracy metrics.
        tie_shuffles: also repeat the protocol on this many splits whose equal-timestamp events
            are shuffled (seeds 0..N-1) and report mean ± std of every metric.
        sampled: also report sampled metrics against this many random negatives, named
            e.g. "ndcg@10_sampled100" (never the headline numbers).
        out: JSON report path; default runs/baselines/<dataset name>-<split>.json (the
            dataset dir itself stays as prepare wrote it).
        device: "cpu", "cuda", "cuda:1", ...; default cuda if available.
        ease_lambdas: EASE L2 grid searched on validation; default 10 ... 2500.
        ease_max_items: EASE is skipped (with the reason in the report) above this many items.
        seed: seed of the sampled negatives.

    Returns:
        The JSON report as a dict, plus "out": the path written.
    """
    from recstack.dataset_dir import load_dataset

    return baselines_report(
        load_dataset(Path(dataset)),
        split=split,
        ks=ks,
        tie_shuffles=tie_shuffles,
        sampled=sampled,
        out=out,
        device=device,
        ease_lambdas=ease_lambdas,
        ease_max_items=ease_max_items,
        seed=seed,
    )
