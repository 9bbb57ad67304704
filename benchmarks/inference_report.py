"""The inference benchmark's results for people: summary tables on the console and a PNG."""

from pathlib import Path

import matplotlib
import numpy as np
from inference_targets import TARGETS
from rich.console import Console
from rich.table import Table

matplotlib.use("Agg")
import matplotlib.pyplot as plt


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
