"""Presenting evaluation results: a rich table per run and a JSON file (docs/architecture.md §5).

Torch-free: training's reports and serving's pipeline evaluation print the same tables."""

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from rich.table import Table

ACCURACY = ("hr", "recall", "ndcg", "mrr")
BEYOND = ("coverage", "pop_lift", "novelty")
_LABELS = {
    "hr": "HR",
    "recall": "Recall",
    "ndcg": "NDCG",
    "mrr": "MRR",
    "coverage": "Coverage",
    "pop_lift": "Pop lift",
    "novelty": "Novelty",
}


def summarise(runs: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """{"mean": {...}, "std": {...}} of each metric over runs (population std, NaNs ignored)."""
    names = list(runs[0]) if runs else []
    values = {n: np.array([r[n] for r in runs], dtype=np.float64) for n in names}
    finite = {n: v[np.isfinite(v)] for n, v in values.items()}
    return {
        "mean": {n: float(v.mean()) if v.size else math.nan for n, v in finite.items()},
        "std": {n: float(v.std()) if v.size else math.nan for n, v in finite.items()},
    }


def table_columns(ks: Sequence[int], show_recall: bool) -> list[str]:
    """Metric keys shown in the table: accuracy @ every k, then beyond-accuracy @ the first k."""
    accuracy = [m for m in ACCURACY if show_recall or m != "recall"]
    return [f"{m}@{k}" for m in accuracy for k in ks] + [f"{m}@{ks[0]}" for m in BEYOND]


def _label(key: str) -> str:
    name, _, k = key.partition("@")
    return f"{_LABELS.get(name, name)}@{k}"


def _cell(value: float | None, spread: float | None = None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if spread is None or not math.isfinite(spread):
        return f"{value:.4f}"
    return f"{value:.4f} ± {spread:.4f}"


def metrics_table(
    title: str,
    rows: Mapping[str, Mapping[str, float] | None],
    columns: Sequence[str],
    spread: Mapping[str, Mapping[str, float]] | None = None,
    notes: Mapping[str, str] | None = None,
) -> Table:
    """Rows = models, columns = metric keys; cells "mean ± std" when `spread` is given.

    A model whose row is None is shown with its note (e.g. why it was skipped).
    """
    table = Table(title=title, title_justify="left")
    table.add_column("model", style="bold")
    for key in columns:
        table.add_column(_label(key), justify="right", no_wrap=True)
    for model, metrics in rows.items():
        if metrics is None:
            note = (notes or {}).get(model, "skipped")
            table.add_row(model, *(["–"] * (len(columns) - 1)), f"[dim]{note}[/dim]")
            continue
        std = (spread or {}).get(model)
        table.add_row(
            model, *(_cell(metrics.get(k), None if std is None else std.get(k)) for k in columns)
        )
    return table


def segment_table(models: dict, metric: str) -> Table:
    """One metric per user segment (rows) and model (columns), to spot who a model fails."""
    table = Table(title=f"{_label(metric)} by user segment", title_justify="left")
    table.add_column("segment", style="bold")
    table.add_column("users", justify="right")
    named = {n: m["segments"] for n, m in models.items() if "segments" in m}
    for name in named:
        table.add_column(name, justify="right")
    first = next(iter(named.values()), {})
    for segment, buckets in first.items():
        for bucket, values in buckets.items():
            cells = [f"{named[n][segment][bucket][metric]:.4f}" for n in named]
            table.add_row(f"{segment}: {bucket}", str(values["n_users"]), *cells)
    return table


def _jsonable(value):
    """Plain JSON types: numpy scalars/arrays to Python, NaN/inf to null, keys to strings."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, payload: Mapping) -> Path:
    """Write `payload` as indented JSON (NaN -> null) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return path
