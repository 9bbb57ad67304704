"""How `recstack monitor` shows its report: rich tables on the console and a PNG of the
histograms, scores and CTR per arm (docs/architecture.md §9)."""

from itertools import pairwise
from pathlib import Path

import numpy as np
from rich.table import Table

from recstack.progress import console


def popularity_labels(edges: list[float]) -> list[str]:
    """Rank-fraction edges -> "top 1%", "1-5%", ..."""
    labels, low = [], 0.0
    for high in edges:
        labels.append(f"top {high:.0%}" if low == 0 else f"{low:.0%}-{high:.0%}")
        low = high
    return labels


def activity_labels(edges: list[float]) -> list[str]:
    """Lower bounds 1, 2, 3, 5 ... -> "1", "2", "3-4", ..., "129+" (events per user-day)."""
    bounds = [int(e) for e in edges]
    labels = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in pairwise(bounds)]
    return [*labels, f"{bounds[-1]}+"]


def _figure(value) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def print_report(report: dict) -> None:
    w = report["window"]
    console.print(
        f"window {w['spec']} ending at ts {w['end']}: {w['events']:,} events, "
        f"{w['interactions']:,} interactions, {w['impressions']:,} impressions"
    )
    table = Table(title="drift checks")
    for column in ("check", "value", "threshold", "result"):
        table.add_column(column, justify="left" if column in ("check", "result") else "right")
    for check in report["checks"]:
        if check["breached"]:
            result = "[red]BREACHED[/red]"
        elif check["judged"]:
            result = "[green]ok[/green]"
        elif check["threshold"] is None:
            result = "[dim]reported[/dim]"
        else:
            result = "[yellow]not judged[/yellow] (too few events, or no figure)"
        table.add_row(check["name"], _figure(check["value"]), _figure(check["threshold"]), result)
    console.print(table)
    inp, out = report["input"], report["output"]
    new = inp["unknown_items"]
    if new["distinct"]:
        top = ", ".join(f"{row['item_id']} ({row['events']})" for row in new["top"])
        console.print(f"{new['distinct']} item(s) without an embedding; most events: {top}")
    if note := inp["unknown_users"].get("note"):
        console.print(f"new users: {note}")
    if note := out.get("scores_note"):
        console.print(f"scores: {note}")
    if report["arms"]:
        arms = Table(title="arms in the window")
        for column in ("arm", "impressions", "clicks", "users", "CTR", "conversion"):
            arms.add_column(column, justify="left" if column == "arm" else "right")
        for name, arm in report["arms"].items():
            arms.add_row(name, *(_figure(arm[k]) for k in ("impressions", "clicks", "users")),
                         _figure(arm["ctr"]), _figure(arm["conversion"]))  # fmt: skip
        console.print(arms)
    files = report.get("files", {})
    where = f" ({files['json']}, {files['png']})" if files else ""
    if report["breached"]:
        console.print(f"[red]drift[/red]: {', '.join(report['breached'])} breached{where}")
    else:
        console.print(f"[green]no drift[/green]: no threshold breached{where}")


def _bars(ax, labels: list[str], training: list[float], window: list[float], title: str) -> None:
    x = np.arange(len(labels))
    if training is not None:  # None: the training data has no such histogram
        ax.bar(x - 0.2, training, 0.4, label="training")
    ax.bar(x + 0.2, window, 0.4, label="window")
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)


def _psi_title(name: str, block: dict) -> str:
    psi, js = block["psi"], block["js"]
    if block["training"] is None:
        figures = "no training histogram"
    else:
        figures = "no events" if psi is None else f"PSI {psi:.3f}, JS {js:.3f}"
    return f"{name} ({figures})"


def _scores(ax, scores: dict) -> None:
    """Median and 5-95 % of the served scores per arm, the window before below the window."""
    if not scores:
        ax.text(0.5, 0.5, "no score logged with the impressions", ha="center", va="center")
        ax.set_axis_off()
        return
    shown = (("reference_quantiles", "window before", "grey", -0.15),
             ("quantiles", "window", "tab:orange", 0.15))  # fmt: skip
    for i, entry in enumerate(scores.values()):
        for key, label, colour, shift in shown:
            if q := entry.get(key):
                ax.plot([q["p05"], q["p95"]], [i + shift] * 2, color=colour)
                ax.plot([q["p50"]], [i + shift], "o", color=colour, label=None if i else label)
    ax.set_yticks(range(len(scores)), list(scores))
    ax.set_ylim(-0.6, len(scores) - 0.4)
    ax.legend(fontsize=8)
    ax.set_title("served score per arm: median and 5-95 %", fontsize=10)


def write_plot(report: dict, path: Path) -> None:
    """drift.png: item popularity and user activity (training vs window), scores per arm,
    CTR per arm with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inp, out = report["input"], report["output"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    pop, act = inp["item_popularity"], inp["user_activity"]
    _bars(axes[0, 0], popularity_labels(pop["edges"]), pop["training"], pop["window"],
          _psi_title("share of events by item popularity", pop))  # fmt: skip
    _bars(axes[0, 1], activity_labels(act["edges"]), act["training"], act["window"],
          _psi_title("share of user-days by events per day", act))  # fmt: skip
    _scores(axes[1, 0], out["scores"])
    ax = axes[1, 1]
    arms = {n: a for n, a in report["arms"].items() if a["ctr"] is not None}
    if arms:
        ctr = [a["ctr"] for a in arms.values()]
        low = [a["ctr"] - (a["ctr_ci"] or [a["ctr"]])[0] for a in arms.values()]
        high = [(a["ctr_ci"] or [0, a["ctr"]])[1] - a["ctr"] for a in arms.values()]
        ax.bar(list(arms), ctr, yerr=[low, high], capsize=4)
        ax.set_title("CTR per arm, 95 % interval", fontsize=10)
    else:
        ax.text(0.5, 0.5, "no impressions in the window", ha="center", va="center")
        ax.set_axis_off()
    if unknown := inp["unknown_items"]["share"]:
        note = f"known items only; {unknown:.1%} of events on items without an embedding"
        axes[0, 0].text(0.02, 0.95, note, transform=axes[0, 0].transAxes, fontsize=8, va="top")
    w = report["window"]
    breached = ", ".join(report["breached"]) or "none"
    title = f"recstack monitor: window {w['spec']} to ts {w['end']}\nbreached: {breached}"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
