"""The study report: trial table, parameter importances, plots, best.yaml and the best
trial's test metrics (the only test metrics a study ever computes, after selection).

Writes into the study dir: report.md, report.json, trials.csv, best.yaml and
plots/{optimization_history,parallel_coordinate,param_importances,intermediate_values}.png.
"""

import csv
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from recstack.errors import RecstackError, first_line
from recstack.eval_report import write_json
from recstack.training.tasks.base import VAL_METRICS
from recstack.training.tuning.best_trial import evaluate_best, test_rows, write_best_config
from recstack.training.tuning.study import DEFAULT_TRIAL, FAIL_REASON, RETRY_OF, lost_trials

PLOTS = {
    "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
    "parallel_coordinate": optuna.visualization.matplotlib.plot_parallel_coordinate,
    "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    "intermediate_values": optuna.visualization.matplotlib.plot_intermediate_values,
}


def _note(trial: FrozenTrial, lost: dict[int, str]) -> str:
    attrs = trial.user_attrs
    if trial.number in lost:
        return f"lost: {lost[trial.number]} (re-queued)"
    if FAIL_REASON in attrs:
        return attrs[FAIL_REASON]
    if trial.state == TrialState.PRUNED:
        return f"pruned after epoch {trial.last_step}"
    if trial.state == TrialState.RUNNING:
        return f"running on {attrs.get('host')} (pid {attrs.get('pid')})"
    notes = ["default config"] if attrs.get(DEFAULT_TRIAL) else []
    if RETRY_OF in attrs:
        notes.append(f"retry of {attrs[RETRY_OF]}")
    return ", ".join(notes)


def _short_names(keys: list[str]) -> dict[str, str]:
    short = {key: ".".join(key.split(".")[-2:]) for key in keys}
    return short if len(set(short.values())) == len(short) else {k: k for k in keys}


def trial_rows(study: optuna.Study) -> tuple[list[dict], list[str]]:
    trials = study.get_trials(deepcopy=False)
    lost = lost_trials(study, trials)
    keys = sorted({k for t in trials for k in t.params}, key=lambda k: k.split(".")[-1])
    rows = []
    for t in trials:
        duration = t.duration.total_seconds() if t.duration else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "val_ndcg@10": None if t.value is None else round(t.value, 4),
                "epochs": t.user_attrs.get("epochs"),
                "best_epoch": t.user_attrs.get("best_epoch"),
                "minutes": None if duration is None else round(duration / 60, 2),
                **{k: t.params.get(k) for k in keys},
                "note": _note(t, lost),
            }
        )
    return rows, keys


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str], names: dict | None = None) -> str:
    names = names or {}
    head = "| " + " | ".join(names.get(c, c) for c in columns) + " |"
    rule = "|" + "---|" * len(columns)
    body = ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


MIN_TRIALS_FOR_IMPORTANCE = 3


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, f"needs {MIN_TRIALS_FOR_IMPORTANCE} complete trials, has {len(complete)}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            values = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as exc:
            return {}, first_line(exc)
    return {k: round(float(v), 4) for k, v in values.items()}, None


def write_plots(study: optuna.Study, out: Path) -> dict[str, str]:
    """Optuna's matplotlib plots as PNG; a plot that needs more trials is skipped with why."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, plot in PLOTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = plot(study)
            except (RuntimeError, ValueError, ZeroDivisionError) as exc:
                written[name] = f"skipped: {first_line(exc)}"
                continue
        figure = getattr(axes, "flat", [axes])[0].figure
        figure.set_size_inches(10, 6)
        figure.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        matplotlib.pyplot.close(figure)
        written[name] = str(out / f"{name}.png")
    return written


def _wall_minutes(trials: list[FrozenTrial]) -> float | None:
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete or datetime.now() for t in trials if t.datetime_start]
    if not starts:
        return None
    return round((max(ends) - min(starts)).total_seconds() / 60, 1)


def study_summary(study: optuna.Study) -> dict:
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        states[t.state.name.lower()] += 1
    lost = len(lost_trials(study, trials))
    default = next(
        (t for t in trials if t.user_attrs.get(DEFAULT_TRIAL) and t.value is not None), None
    )
    return {
        "study": study.study_name,
        "trials": len(trials),
        "states": {k: v for k, v in states.items() if v},
        "lost_and_requeued": lost,
        "wall_minutes": _wall_minutes(trials),
        "trial_minutes": round(
            sum(t.duration.total_seconds() for t in trials if t.duration) / 60, 1
        ),
        "default_trial": None
        if default is None
        else {
            "number": default.number,
            "val_ndcg@10": default.value,
        },
    }


def _test_section(best: FrozenTrial, metrics: dict | None) -> tuple[list[str], dict]:
    if metrics is None:
        host = best.user_attrs.get("host")
        return [
            f"Test metrics: the best trial's checkpoint is on {host}; run the same "
            "`recstack tune ... --n-trials 0` there to evaluate it.",
            "",
        ], {}
    lines = [
        "## Best trial on the test set (computed once, after selection)",
        "",
        markdown_table(test_rows(metrics), ["split", *VAL_METRICS]),
        "",
    ]
    return lines, {"valid": metrics["valid"], "test": metrics["test"]}


def write_report(study: optuna.Study, study_dir: Path, console: Console | None = None) -> dict:
    console = console or Console(width=160)
    study_dir = Path(study_dir)
    rows, keys = trial_rows(study)
    summary = study_summary(study)
    with (study_dir / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        write_json(study_dir / "report.json", {**summary, "best": None})
        console.print(f"study {study.study_name}: no complete trial yet ({summary['states']})")
        return summary
    best = study.best_trial
    weights, why_not = importances(study)
    plots = write_plots(study, study_dir / "plots")
    best_yaml = write_best_config(best, study, study_dir / "best.yaml")
    try:
        metrics = evaluate_best(best, console)
    except RecstackError as exc:
        console.print(f"[red]could not evaluate the best trial:[/red] {exc}")
        metrics = None
    test_lines, test = _test_section(best, metrics)
    summary |= {
        "best": {
            "number": best.number,
            "val_ndcg@10": best.value,
            "val_metrics": best.user_attrs.get("val_metrics"),
            "params": best.params,
            "best_epoch": best.user_attrs.get("best_epoch"),
            "config": str(best_yaml),
            **test,
        },
        "importances": weights,
        "importances_skipped": why_not,
        "plots": plots,
    }
    write_json(study_dir / "report.json", summary)
    names = _short_names(keys)
    columns = ["trial", "state", "val_ndcg@10", "epochs", "best_epoch", "minutes", *keys, "note"]
    default = summary["default_trial"]
    lines = [
        f"# Study {study.study_name}",
        "",
        f"{summary['trials']} trials {summary['states']}, {summary['wall_minutes']} min wall "
        f"time, objective: best validation NDCG@10 (full ranking).",
        f"Best: trial {best.number}, val NDCG@10 {best.value:.4f}"
        + (
            f" (default config: trial {default['number']}, {default['val_ndcg@10']:.4f})"
            if default
            else ""
        )
        + f". Reproduce: `recstack train --config {best_yaml}`.",
        "",
        *test_lines,
        "## Parameter importances (fANOVA over complete trials)",
        "",
        markdown_table(
            [{"param": k, "importance": v} for k, v in weights.items()], ["param", "importance"]
        )
        if weights
        else f"skipped: {why_not}",
        "",
        "## Trials",
        "",
        markdown_table(rows, columns, names),
        "",
        "## Plots",
        "",
        *[
            f"![{n}](plots/{n}.png)" if not p.startswith("skipped") else f"- {n}: {p}"
            for n, p in plots.items()
        ],
        "",
    ]
    (study_dir / "report.md").write_text("\n".join(lines))
    _print_summary(console, rows, columns, names, summary, study_dir)
    return summary


def _print_summary(console, rows, columns, names, summary, study_dir: Path) -> None:
    table = Table(title=f"study {summary['study']}: trials by validation NDCG@10")
    for column in columns:
        table.add_column(names.get(column, column), overflow="fold")
    ranked = sorted(rows, key=lambda r: -(r["val_ndcg@10"] or -1.0))
    for row in ranked[:15]:
        table.add_row(*[_fmt(row.get(c)) for c in columns])
    console.print(table)
    best = summary["best"]
    test = f", test NDCG@10 {best['test']['ndcg@10']:.4f}" if "test" in best else ""
    console.print(f"best trial {best['number']}: val NDCG@10 {best['val_ndcg@10']:.4f}{test}")
    console.print(f"[dim]wrote {study_dir}/report.md, best.yaml, trials.csv, plots/[/dim]")
