"""PNG plots of a load test (matplotlib, Agg): percentiles vs offered rate; latency over time."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from open_loop import PERCENTILES, Timeline, per_second

STYLES = {"p50": "-", "p90": "--", "p99": "-.", "p99.9": ":"}


def latency_vs_rate(steps: list[dict], target_ms: float | None, out: Path) -> Path:
    """Left: every percentile over all requests; right: p99 per endpoint; by offered rate."""
    steps = sorted(steps, key=lambda step: step["offered_rps"])
    rates = [step["offered_rps"] for step in steps]
    fig, (all_ax, end_ax) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for p in PERCENTILES:
        all_ax.plot(rates, _values(steps, "overall", p), STYLES[p], marker="o", ms=3, label=p)
    for color, name in zip(plt.cm.tab10.colors, steps[0]["endpoints"], strict=False):
        end_ax.plot(rates, _values(steps, name, "p99"), marker="o", ms=3, color=color, label=name)
    for ax, title in ((all_ax, "all requests"), (end_ax, "p99 by endpoint")):
        for step in steps:
            if not step.get("sustained", True):
                ax.axvline(step["offered_rps"], color="red", alpha=0.25, lw=6)
        if target_ms is not None:
            ax.axhline(target_ms, color="black", lw=0.8, label=f"p99 target {target_ms:g} ms")
        ax.set(xlabel="offered rate (requests/s)", yscale="log", title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    all_ax.set_ylabel("latency (ms, from scheduled send)")
    fig.suptitle("latency vs offered rate (red: rate not sustained)")
    return _save(fig, out)


def _values(steps: list[dict], endpoint: str, percentile: str) -> list[float]:
    """One percentile of one endpoint ("overall": all requests) per step; NaN if no sample."""
    out = []
    for step in steps:
        result = step["overall"] if endpoint == "overall" else step["endpoints"][endpoint]
        value = result["latency_ms"][percentile]
        out.append(np.nan if value is None else value)
    return out


def latency_over_time(
    runs: list[tuple[float, Timeline]], out: Path, stalls: list[dict | None] | None = None
) -> Path:
    """Each request's latency at its scheduled time, steps one after another, with per-second
    p99 and the errors per second; with `stalls` (benchmarks/stalls.py, one per run), a third
    panel shows the server's worst stall of each second, coloured by kind."""
    stalls = stalls or [None] * len(runs)
    shown = any(stalls)
    fig, axes = plt.subplots(
        3 if shown else 2,
        1,
        figsize=(10, 7.5 if shown else 6),
        sharex=True,
        height_ratios=(3, 1, 1.5) if shown else (3, 1),
    )
    ax, err_ax = axes[0], axes[1]
    offset = 0.0
    colors = dict(zip(_endpoints(runs), plt.cm.tab10.colors, strict=False))
    kinds = sorted({r["kind"] for found in stalls if found for r in found["per_second"]})
    kind_colors = dict(zip(kinds, plt.cm.Set1.colors * 3, strict=False))
    for (rate, timeline), found in zip(runs, stalls, strict=True):
        if found:
            for row in found["per_second"]:
                color = kind_colors[row["kind"]]
                axes[2].bar(offset + row["second"] + 0.5, row["ms"], width=1.0, color=color)
        t = timeline.scheduled_s + offset
        for code, name in enumerate(timeline.endpoints):
            mask = timeline.endpoint == code
            ax.scatter(t[mask], timeline.latency_ms[mask], s=2, alpha=0.3, color=colors[name])
        rows = per_second(timeline)
        middle = [offset + row["second"] + 0.5 for row in rows]
        p99 = [np.nan if row["p99_ms"] is None else row["p99_ms"] for row in rows]
        ax.plot(middle, p99, color="black", lw=1)
        err_ax.bar(middle, [row["errors"] for row in rows], width=1.0, color="red")
        ax.axvline(offset, color="grey", lw=0.5)
        ax.text(
            offset, 1.0, f" {rate:.4g}/s", transform=ax.get_xaxis_transform(), fontsize=7, va="top"
        )
        offset += float(timeline.scheduled_s.max(initial=0.0)) + 1.0
    for name, color in colors.items():
        ax.scatter([], [], s=10, color=color, label=name)
    ax.plot([], [], color="black", lw=1, label="p99 per second")
    ax.set(ylabel="latency (ms)", yscale="log", title="latency over time (warm-ups left out)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    err_ax.set(ylabel="errors / s")
    if shown:
        for kind, color in kind_colors.items():
            axes[2].bar([], [], color=color, label=kind)
        axes[2].set(ylabel="worst server\nstall (ms)", yscale="log")
        axes[2].legend(fontsize=6, ncol=4, loc="upper left")
        axes[2].grid(alpha=0.3)
    axes[-1].set(xlabel="seconds (measured windows, one after another)")
    return _save(fig, out)


def _endpoints(runs: list[tuple[float, Timeline]]) -> list[str]:
    names: list[str] = []
    for _, timeline in runs:
        names += [name for name in timeline.endpoints if name not in names]
    return names


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
