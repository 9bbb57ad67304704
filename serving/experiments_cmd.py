"""`recstack experiments report`: the A/B report from the event log as tables, JSON and a PNG
(docs/architecture.md §8, "Experiments"; the statistics: serving/experiment_report.py)."""

import json
import os
from pathlib import Path

from rich import box
from rich.console import Group
from rich.table import Table

from recstack.progress import console
from recstack.serving.experiment_report import METRICS, experiment_report
from recstack.serving.experiments import load_experiment

TITLES = {
    "ctr": "CTR in % (Δ in percentage points)",
    "conversion": "conversion: users with a purchase, in % (Δ in percentage points)",
    "value_per_user": "value per user (Δ in the same unit)",
}
DEFAULT_KEY_ENV = "RECSTACK_MODELS_KEY"  # as the retrain loop (loop/config.py)


def _number(value: float | None, metric: str, signed: bool = False) -> str:
    """CTR and conversion in %, value per user as is (3 significant digits); "–" for None."""
    if value is None:
        return "–"
    sign = "+" if signed else ""
    return f"{value:{sign}.3g}" if metric == "value_per_user" else f"{100 * value:{sign}.2f}"


def _interval(ci: list[float] | None, metric: str, signed: bool = False) -> str:
    if ci is None:
        return "–"
    return f"[{_number(ci[0], metric, signed)}, {_number(ci[1], metric, signed)}]"


def _table(title: str, columns: tuple[str, ...], caption: str | None = None) -> Table:
    table = Table(
        title=title, caption=caption, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False
    )
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    return table


def _traffic_table(result: dict) -> Table:
    title = f"experiment {result['experiment'] or '(arms from the log)'}: traffic"
    caption = (
        "clicks and purchases count when they match a served impression (request_id, user, "
        "item); unattributed: clicks / purchases that match none"
    )
    columns = ("arm", "kind", "users", "impressions", "clicks", "purchases", "unattributed")
    table = _table(title, columns, caption)
    for name, arm in result["arms"].items():
        table.add_row(
            name if arm["declared"] else f"{name} (not declared)",
            arm["kind"] or "?",
            str(arm["users"]),
            str(arm["impressions"]),
            str(arm["clicks"]),
            str(arm["purchases"]),
            f"{arm['unattributed_clicks']} / {arm['unattributed_purchases']}",
        )
    unassigned = result["unassigned"]
    if unassigned["events"]:
        table.add_row("[dim]no arm[/dim]", "", str(unassigned["users"]),
                      str(unassigned["impressions"]), "", "", "")  # fmt: skip
    return table


def _metric_table(result: dict, metric: str) -> Table:
    columns = ("arm", "value", "95 % CI", "Δ vs control", "Δ 95 % CI", "p-value")
    table = _table(TITLES[metric], columns)
    key = "vs_control" if metric == "ctr" else f"{metric}_vs_control"
    for name, arm in result["arms"].items():
        versus = arm[key] or {}
        p_value = versus.get("p_value")
        table.add_row(
            name,
            _number(arm[metric], metric),
            _interval(arm[f"{metric}_ci"], metric),
            "control" if name == result["control"] else _number(versus.get("diff"), metric, True),
            _interval(versus.get("ci"), metric, signed=True),
            "–" if p_value is None else f"{p_value:.3g}",
        )
    return table


def _guardrails(result: dict) -> Table | str:
    guard = result["guardrails"]
    if not guard["available"]:
        return f"guardrails: unavailable: {guard['note']}"
    table = _table("guardrails", ("arm", "p99 latency", "fallback share", "responses"))
    for name, arm in result["arms"].items():
        rails = arm.get("guardrails") or {}
        p99, share = rails.get("p99_latency_s"), rails.get("fallback_share")
        table.add_row(
            name,
            "–" if p99 is None else f"{1000 * p99:.1f} ms",
            "–" if share is None else f"{100 * share:.1f} %",
            str(rails.get("recommendations", 0)),
        )
    return table


def _srm_line(result: dict) -> str:
    srm = result.get("srm")
    if srm is None:
        return "SRM: no declared weights (pass --serve_config)"
    if srm["p_value"] is None:
        return f"SRM: not computed ({srm['note']})"
    verdict = "[bold red]MISMATCH[/bold red]" if srm["flagged"] else "ok"
    expected = ", ".join(
        f"{n} {srm['users'][n]} (expected {e:.1f})" for n, e in srm["expected"].items()
    )
    return (
        f"SRM (users vs weights: {expected}): chi² {srm['chi2']:.2f}, "
        f"p = {srm['p_value']:.3g}: {verdict} (flagged below {srm['alpha']})"
    )


def render_report(result: dict) -> Group:
    """The report as rich renderables: traffic, one table per metric, SRM, guardrails, notes."""
    parts = [_traffic_table(result), *(_metric_table(result, m) for m in METRICS)]
    parts += [_srm_line(result), _guardrails(result)]
    parts += [f"[yellow]note:[/yellow] {note}" for note in result["notes"]]
    parts += [f"arm {n}: {a['note']}" for n, a in result["arms"].items() if a["note"]]
    return Group(*parts)


def fetch_metrics(url: str, key_env: str = DEFAULT_KEY_ENV) -> tuple[str | None, str]:
    """(exposition text or None, what happened) from GET `url` with the operator key in
    `key_env`; never raises: the report then shows guardrails as unavailable."""
    import requests

    key = os.environ.get(key_env, "")
    if not key:
        return None, f"set {key_env} to a models-scope API key to read {url}"
    try:
        reply = requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    except requests.RequestException as exc:
        return None, f"{url} does not answer ({type(exc).__name__})"
    if reply.status_code != 200:
        return None, f"{url} answered {reply.status_code}; it needs a models-scope key"
    return reply.text, url


def report(
    log: Path,
    serve_config: Path | None = None,
    metrics_url: str | None = None,
    json_out: Path | None = None,
    png_out: Path | None = None,
    control: str | None = None,
    key_env: str = DEFAULT_KEY_ENV,
) -> dict:
    """The A/B report: CTR, conversion and value per user per arm with user-level 95 %
    intervals, each arm vs the control, a sample-ratio-mismatch check and guardrails.

    (`--serve_config`, not `--config`: every recstack command takes its flags from a YAML
    file with `--config`.)

    Args:
        log: the service's event log directory. Impressions should carry the recommend
            response's request_id; clicks and purchases with it are attributed to that list.
        serve_config: the serve config YAML; its experiment (applications[0].args.experiment)
            gives the declared arms, their weights (the SRM check) and the control (the
            popularity arm). Without it, arms come from the log and the control is the first
            by name.
        metrics_url: the service's /metrics (e.g. http://127.0.0.1:8000/metrics), read with
            the key in `key_env`, for the guardrails (p99 latency and fallback share per
            arm); without it, or when it does not answer, guardrails show as unavailable.
        json_out: also write the report as JSON here.
        png_out: also draw each metric with its interval over time per arm into this PNG.
        control: compare with this arm instead of the experiment's control.
        key_env: the environment variable holding a models-scope API key.
    """
    from recstack.serving.event_log import read_events

    experiment = load_experiment(serve_config) if serve_config is not None else None
    text, source = (None, "no --metrics_url given")
    if metrics_url is not None:
        text, source = fetch_metrics(metrics_url, key_env)
    result = experiment_report(
        read_events(log),
        experiment,
        control,
        guardrails=text,
        over_time=png_out is not None or json_out is not None,
        guardrails_source=metrics_url if text is not None else None,
    )
    if text is None:
        result["guardrails"]["note"] = source
    console.print(render_report(result))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"report written to {json_out}")
    if png_out is not None:
        from recstack.serving.experiment_plot import write_plot

        write_plot(result, png_out)
        console.print(f"plot written to {png_out}")
    return result
