"""`recstack experiments report`: CTR per arm from the event log, as a table and JSON."""

import json
from pathlib import Path

from rich.table import Table

from recstack.progress import console
from recstack.serving.experiments import experiment_report, load_experiment


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def _interval(ci: list[float] | None, signed: bool = False) -> str:
    if ci is None:
        return "–"
    sign = "+" if signed else ""
    return f"[{100 * ci[0]:{sign}.2f}, {100 * ci[1]:{sign}.2f}] %"


def render_report(result: dict) -> Table:
    title = f"experiment {result['experiment'] or '(arms from the log)'}"
    table = Table(title=title, caption=f"control: {result['control']}, CIs at 95 %")
    for column in ("arm", "kind", "users", "impressions", "clicks", "CTR", "CTR CI"):
        table.add_column(column, justify="left" if column in ("arm", "kind") else "right")
    for column in ("Δ CTR vs control", "Δ CI", "p-value"):
        table.add_column(column, justify="right")
    for name, arm in result["arms"].items():
        versus = arm["vs_control"] or {}
        diff = versus.get("diff")
        p_value = versus.get("p_value")
        table.add_row(
            name if arm["declared"] else f"{name} (not declared)",
            arm["kind"] or "?",
            str(arm["users"]),
            str(arm["impressions"]),
            str(arm["clicks"]),
            _pct(arm["ctr"]),
            _interval(arm["ctr_ci"]),
            "control" if name == result["control"] else _pct(diff).replace("%", "pp"),
            _interval(versus.get("ci"), signed=True).replace("%", "pp"),
            "–" if p_value is None else f"{p_value:.3g}",
        )
    unassigned = result["unassigned"]
    table.add_row(
        "[dim]unassigned[/dim]",
        "",
        str(unassigned["users"]),
        str(unassigned["impressions"]),
        str(unassigned["clicks"]),
        *[""] * 5,
    )
    return table


def report(log: Path, serve_config: Path | None = None, json_out: Path | None = None) -> dict:
    """CTR per experiment arm with 95 % confidence intervals, and each arm vs the control.

    (`--serve_config`, not `--config`: every recstack command takes its flags from a YAML
    file with `--config`.)

    Args:
        log: the service's event log directory (impressions and clicks carry their arm).
        serve_config: the Ray Serve config YAML; its experiment (applications[0].args.experiment)
            supplies the declared arms, their kinds and the control (the popularity arm).
            Without it, arms come from the log and the control is the first by name.
        json_out: also write the report as JSON here.
    """
    from recstack.serving.event_log import read_events

    experiment = load_experiment(serve_config) if serve_config is not None else None
    result = experiment_report(read_events(log), experiment)
    console.print(render_report(result))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"report written to {json_out}")
    return result
