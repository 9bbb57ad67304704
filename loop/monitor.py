"""`recstack monitor`: has the traffic drifted away from what the serving model was trained on?
(docs/architecture.md §9)

    recstack monitor --events runs/serve/events --artifact artifacts/sasrec/v1 \
        [--dataset data/ml-100k] [--window 1d] [--until TS] \
        [--config configs/monitor/default.yaml] [--out DIR]

Reads the event log (erased users left out) in the window that ends at the newest event (or
--until) and compares it with the artifact: its training data's profile (the manifest's
`profile`, recstack/data_profile.py), its catalogue and popularity. Writes drift.json and
drift.png into --out, prints the checks, and exits 0 (no threshold breached), 3 (one or more
breached) or 2 (bad input: config, artifact, event log, an empty window). `recstack retrain`
runs it first when its config has a `trigger` (loop/config.py).
"""

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from recstack.artifact import Catalog
from recstack.artifact_manifest import read_artifact_manifest
from recstack.dataset_dir import DATASET_KIND
from recstack.errors import DataError, RecstackError, first_line
from recstack.event_log_format import INTERACTION_TYPES, read_events
from recstack.loop.drift import (
    input_drift,
    output_drift,
    score_drift,
    scores,
    unknown_users,
    with_item_idx,
)
from recstack.loop.monitor_config import MonitorConfig, read_monitor_config, window_seconds
from recstack.loop.monitor_report import print_report, write_plot
from recstack.manifest import CONTENT_HASH, read_manifest
from recstack.schema import EVENT_TYPE, ITEM_ID, ITEM_IDX, TS, USER_ID, USERS_FILE
from recstack.user_files import ORIGINAL_HASH

BREACHED = 3  # exit code when a threshold is breached (2 is bad input, as everywhere)
REPORT_JSON, REPORT_PNG = "drift.json", "drift.png"
IMPRESSION = "impression"


class EmptyWindow(RecstackError):
    """No event in the window: nothing to judge."""


def _catalog(artifact: Path):
    """The artifact's manifest (hashes checked), catalogue and training profile."""
    manifest = read_artifact_manifest(artifact)
    if manifest.profile is None:
        raise DataError(
            f"{artifact} was exported before artifacts recorded their training data's profile; "
            "re-export it (`recstack export`) to monitor it"
        )
    catalog = Catalog.load(artifact, manifest)
    items = pl.DataFrame(
        {ITEM_ID: catalog.item_ids[1:], ITEM_IDX: np.arange(1, catalog.n_items + 1)},
        schema={ITEM_ID: pl.String, ITEM_IDX: pl.Int64},
    )
    return manifest, catalog, items


def _known_users(dataset: Path | None, dataset_hash: str | None) -> tuple[pl.Series | None, str]:
    """The training data's user ids, from the artifact's dataset (checked by content hash)."""
    if dataset is None:
        return None, "unavailable: pass --dataset (the artifact's dataset) to count new users"
    manifest = read_manifest(dataset, DATASET_KIND, verify=False)
    if dataset_hash not in {manifest.get(CONTENT_HASH), manifest.get(ORIGINAL_HASH)}:
        raise DataError(
            f"{dataset} is not the dataset the artifact was exported from (content hash "
            f"{str(manifest.get(CONTENT_HASH))[:12]}, the artifact's {str(dataset_hash)[:12]}); "
            "pass that dataset as --dataset"
        )
    try:
        users = pl.read_parquet(Path(dataset) / USERS_FILE, columns=[USER_ID])[USER_ID]
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"cannot read {Path(dataset) / USERS_FILE}: {first_line(exc)}") from None
    return users.cast(pl.String), ""


def _events(directory: Path) -> pl.DataFrame:
    try:
        table = read_events(directory)
    except OSError as exc:
        raise DataError(f"cannot read the event log {directory}: {exc}") from None
    if table.num_rows == 0:
        raise EmptyWindow(f"the event log {directory} holds no events; is it the service's log?")
    return pl.from_arrow(table)


def _window(events: pl.DataFrame, seconds: int, until: int | None) -> tuple[int, int]:
    end = int(events[TS].max()) if until is None else int(until)
    return end - seconds, end


def _checks(report: dict, config: MonitorConfig) -> list[dict]:
    """Every figure with its threshold (None: reported, not checked); judged only with enough
    events and a figure."""
    t, inp, out = config.thresholds, report["input"], report["output"]
    arms = report["arms"]
    worst_score = max(
        (s["psi"] for s in out["scores"].values() if s["psi"] is not None), default=None
    )
    ctr = [
        a["ctr"]
        for a in arms.values()
        if a["ctr"] is not None and (a["impressions"] or 0) >= config.min_impressions
    ]
    rows = [  # name, figure, threshold, breached above it (else below), the block judged
        ("item_popularity_psi", inp["item_popularity"]["psi"], t.item_popularity_psi, True, inp),
        ("item_popularity_js", inp["item_popularity"]["js"], t.item_popularity_js, True, inp),
        ("user_activity_psi", inp["user_activity"]["psi"], t.user_activity_psi, True, inp),
        ("user_activity_js", inp["user_activity"]["js"], t.user_activity_js, True, inp),
        ("unknown_item_share", inp["unknown_items"]["share"], t.unknown_item_share, True, inp),
        ("unknown_user_share", inp["unknown_users"]["share"], t.unknown_user_share, True, inp),
        ("new_items", inp["unknown_items"]["distinct"], t.new_items, True, inp),
        ("coverage_min", out["coverage"], t.coverage_min, False, out),
        ("popularity_lift_max", out["popularity_lift"], t.popularity_lift_max, True, out),
        ("score_psi", worst_score, t.score_psi, True, out),
        ("ctr_min", min(ctr) if ctr else None, t.ctr_min, False, out),
    ]
    checks = []
    for name, value, threshold, above, part in rows:
        judged = threshold is not None and part["judged"] and value is not None
        breached = judged and (value > threshold if above else value < threshold)
        checks.append(
            {"name": name, "value": value, "threshold": threshold, "judged": judged,
             "breached": bool(breached)}
        )  # fmt: skip
    return checks


def monitor(
    events: Path,
    artifact: Path,
    config: MonitorConfig,
    dataset: Path | None = None,
    window: str | None = None,
    until: int | None = None,
) -> dict:
    """The drift report of the window (see the module docstring); raises EmptyWindow."""
    manifest, catalog, items = _catalog(Path(artifact))
    known, why = _known_users(dataset, manifest.vocab.dataset_hash)
    seconds = window_seconds(window or config.window)
    log = _events(Path(events))
    start, end = _window(log, seconds, until)
    now = log.filter((pl.col(TS) > start) & (pl.col(TS) <= end))
    if now.height == 0:
        raise EmptyWindow(
            f"no events in the window ({window or config.window} up to ts {end}) of {events}; "
            "widen --window or move --until"
        )
    now = with_item_idx(now, items)
    interactions = now.filter(pl.col(EVENT_TYPE).is_in(INTERACTION_TYPES))
    impressions = now.filter(pl.col(EVENT_TYPE) == IMPRESSION)
    before = log.filter((pl.col(TS) > start - seconds) & (pl.col(TS) <= start))
    before = before.filter(pl.col(EVENT_TYPE) == IMPRESSION)
    inp = input_drift(interactions, catalog.popularity, manifest.profile, end, config.top_new_items)
    inp["unknown_users"] = unknown_users(now[USER_ID], known, why)
    inp["judged"] = interactions.height >= config.min_events
    out = output_drift(impressions, catalog.popularity)
    out["scores"] = score_drift(scores(impressions), scores(before))
    if not out["scores"]:
        out["scores_note"] = (
            "unavailable: no impression carries a score (clients may log the served score as "
            'context {"score": ...})'
        )
    out["judged"] = impressions.height >= config.min_impressions
    report = {
        "window": {"spec": window or config.window, "start": start, "end": end,
                   "events": now.height, "interactions": interactions.height,
                   "impressions": impressions.height},
        "artifact": {"path": str(artifact), "content_hash": manifest.content_hash,
                     "dataset_hash": manifest.vocab.dataset_hash, "n_items": catalog.n_items},
        "input": inp,
        "output": out,
        "arms": _arms(now),
        "config": config.model_dump(),
    }  # fmt: skip
    report["checks"] = _checks(report, config)
    report["breached"] = [c["name"] for c in report["checks"] if c["breached"]]
    return report


def _arms(window: pl.DataFrame) -> dict:
    """CTR (and conversion, where the experiment report gives it) per arm in the window."""
    from recstack.serving.experiment_report import experiment_report

    arms = experiment_report(window.to_arrow(), experiment=None)["arms"]
    keep = ("impressions", "clicks", "users", "ctr", "ctr_ci")
    return {
        name: {**{k: arm.get(k) for k in keep}, "conversion": arm.get("conversion")}
        for name, arm in arms.items()
    }


def write_report(report: dict, out: Path) -> dict[str, Path]:
    """drift.json and drift.png in `out`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecstackError(f"cannot create the report folder {out}: {exc.strerror}") from None
    paths = {"json": out / REPORT_JSON, "png": out / REPORT_PNG}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    write_plot(report, paths["png"])
    return paths


def run_monitor(
    events: Path,
    artifact: Path,
    config: MonitorConfig,
    out: Path | None = None,
    dataset: Path | None = None,
    window: str | None = None,
    until: int | None = None,
) -> dict:
    """Compute, write drift.json and drift.png into `out` (default runs/monitor/<window end>),
    print the checks; returns the report."""
    report = monitor(events, artifact, config, dataset, window, until)
    if out is None:
        out = (
            Path("runs")
            / "monitor"
            / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(report["window"]["end"]))
        )
    report["files"] = {k: str(v) for k, v in write_report(report, Path(out)).items()}
    print_report(report)
    return report


def _until(text: str | None) -> int | None:
    """--until: seconds since the epoch, or an ISO date and time (UTC unless it says)."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RecstackError(
            f"--until {text!r}: give seconds since the epoch or YYYY-MM-DDTHH:MM:SS (UTC)"
        ) from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def monitor_cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="recstack monitor",
        description="Drift of the logged traffic against the serving model's training data "
        "(item popularity, user activity, unknown items and users), of what was served "
        "(coverage, popularity lift, scores) and CTR per arm, in a window of the event log. "
        "Writes drift.json and drift.png. Exit codes: 0 no threshold breached; "
        f"{BREACHED} a threshold breached; 2 bad input (config, artifact, event log, an empty "
        "window).",
    )
    parser.add_argument("--events", type=Path, required=True, help="the service's event log")
    parser.add_argument("--artifact", type=Path, required=True, help="the serving artifact dir")
    parser.add_argument(
        "--dataset", type=Path, help="the artifact's dataset: counts users it does not hold"
    )
    parser.add_argument("--window", help="e.g. 1d, 6h, 30m (default: the config's, 1d)")
    parser.add_argument(
        "--until", help="window end: ts (s) or YYYY-MM-DDTHH:MM:SS UTC (default: newest event)"
    )
    parser.add_argument("--config", type=Path, help="thresholds YAML (configs/monitor/)")
    parser.add_argument("--out", type=Path, help="report folder (default runs/monitor/<end>)")
    args = parser.parse_args(argv)
    config = read_monitor_config(args.config)
    until = _until(args.until)
    report = run_monitor(
        args.events, args.artifact, config, args.out, args.dataset, args.window, until
    )
    return BREACHED if report["breached"] else 0
