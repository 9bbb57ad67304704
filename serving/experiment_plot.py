"""The A/B report's PNG: each metric with its 95 % interval over time, one line per arm
(docs/architecture.md §8, "Experiments"). Points are cumulative: the metric over everything
logged up to the end of each hour or day (the report's `over_time`)."""

from datetime import UTC, datetime
from pathlib import Path

from recstack.errors import RecstackError

PANELS = (("ctr", "CTR"), ("conversion", "conversion (users)"), ("value_per_user", "value / user"))


def write_plot(report: dict, path: Path) -> Path:
    """Draw `report["over_time"]` into a PNG at `path` (matplotlib, Agg); a log without
    impressions gives a figure that says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    series = report.get("over_time")
    if series is None:
        raise RecstackError("the report has no over_time series: build it with over_time=True")
    points = series["points"]
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(9, 8), sharex=True, squeeze=False)
    title = f"experiment {report['experiment'] or '(arms from the log)'}"
    fig.suptitle(f"{title}: cumulative by {series['bucket'] or '-'}, 95 % intervals")
    if not points:
        axes[0, 0].text(0.5, 0.5, series["note"] or "no data", ha="center", va="center")
    when = [datetime.fromtimestamp(p["until_ms"] / 1000, tz=UTC) for p in points]
    arms = list(points[-1]["arms"]) if points else []
    for (metric, label), ax in zip(PANELS, axes[:, 0], strict=True):
        ax.set_ylabel(label)
        if metric != "value_per_user":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        for arm in arms:
            rows = [p["arms"][arm] for p in points]
            values = [r[metric] for r in rows]
            if all(v is None for v in values):
                continue
            line = ax.plot(when, [float("nan") if v is None else v for v in values], marker=".")
            low = [
                float("nan") if r[f"{metric}_ci"] is None else r[f"{metric}_ci"][0] for r in rows
            ]
            high = [
                float("nan") if r[f"{metric}_ci"] is None else r[f"{metric}_ci"][1] for r in rows
            ]
            ax.fill_between(when, low, high, color=line[0].get_color(), alpha=0.2)
            line[0].set_label(f"{arm} (control)" if arm == report["control"] else arm)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (UTC)")
    fig.autofmt_xdate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
