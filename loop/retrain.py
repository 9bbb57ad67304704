"""`recstack retrain`: from "events arrived" to "a better model serves, with the evidence" or
"the new model was refused, and why" (docs/architecture.md §9).

    recstack retrain --config configs/loop/ml100k.yaml      # cron, a systemd timer, a CronJob
    recstack retrain --config configs/loop/ml100k.yaml --history
    recstack retrain --config configs/loop/ml100k.yaml --rollback

Steps, each recorded in the run's state.json when it ends (a killed run resumes at the step it
was in; finished steps are not repeated):

1. serving: what the service publishes for its default model (GET /v1/admin/models), the
   artifacts' checkpoints, and the dataset they were exported from (checked by hash).
   trigger (only with a `trigger` in the config): `recstack monitor` on the serving ranker's
   artifact and dataset; no threshold breached (or no event in its window): the run ends here,
   "no drift", and nothing is written but the monitor's report in <loop_dir>/monitor/<run>.
2. data: `recstack data extend` of that dataset with the event log since its cut-off (vocab
   kept, new ids appended). Nothing new, or only what an earlier refused run already judged:
   the run ends here and nothing is written.
3. train_ranker, train_retriever: `recstack train` on the new version, warm-started from the
   serving checkpoints (or from scratch), resumed from last.ckpt after a kill.
4. export: both to `<loop_dir>/artifacts/<side>/<run>` (ONNX, parity checked).
5. judge: `recstack eval artifacts` of the serving and the new pipeline on the same recent
   holdout: the new version's test targets after the serving data's cut-off.
6. gate (loop/gate.py); then promote through POST /v1/admin/models and wait until every
   replica serves the new models; a replica that refuses them gets the old ones published
   back (rolled back), and the report says which replica and why.
7. audit: one record in `<loop_dir>/audit.jsonl`.
"""

import hashlib
import json
import shutil
import time
from pathlib import Path

from filelock import FileLock, Timeout
from rich.console import Console
from rich.table import Table

from recstack.artifact import artifact_version
from recstack.artifact_manifest import read_artifact_manifest
from recstack.dataset_dir import load_dataset
from recstack.errors import DataError, RecstackError
from recstack.loop.admin_client import SIDES, AdminClient
from recstack.loop.config import Loop, read_loop_config
from recstack.loop.gate import failed, gate_checks
from recstack.loop.ledger import RunState, append_audit, open_run, read_audit
from recstack.manifest import CONTENT_HASH
from recstack.progress import console
from recstack.schema import TS
from recstack.user_files import ORIGINAL_HASH

TRAIN_STEP = {"ranker": "train_ranker", "retriever": "train_retriever"}
PROMOTED, REFUSED, ROLLED_BACK, ROLLBACK = "promoted", "refused", "rolled_back", "rollback"
CANARY = "canary"  # passed the gate, published under the canary model
JUDGED = (REFUSED, CANARY)  # the events of such a run are not judged again


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _step(run: RunState, name: str, work) -> dict:
    done = run.result(name)
    if done is not None:
        console.print(f"[dim]{name}: done in an earlier attempt of run {run.id}[/dim]")
        return done
    console.rule(f"{name} (run {run.id})")
    tick = time.perf_counter()
    result = work()
    return run.record(name, {**result, "seconds": round(time.perf_counter() - tick, 1)})


def _serving(loop: Loop, client: AdminClient) -> dict:
    """What serves now, with the dataset and checkpoints it came from."""
    dirs = client.served_dirs(loop.model)
    manifests = {}
    for side, path in dirs.items():
        if not Path(path).is_dir():
            raise RecstackError(
                f"the service serves {side} {path}, which is not a directory here; run retrain "
                "where the service's artifact paths resolve"
            )
        manifests[side] = read_artifact_manifest(Path(path))
    hashes = {m.vocab.dataset_hash for m in manifests.values()}
    dataset = _dataset_of(loop, dirs)
    data = load_dataset(dataset)
    known = {data.manifest.get(CONTENT_HASH), data.manifest.get(ORIGINAL_HASH)} - {None}
    if len(hashes) != 1 or not hashes <= known:
        raise DataError(
            f"the serving artifacts were exported from dataset(s) "
            f"{sorted(h[:12] for h in hashes if h)}, not {dataset} "
            f"({str(data.manifest.get(CONTENT_HASH))[:12]}); set base_dataset in {loop.path} "
            "to the dataset they were trained on"
        )
    versions = {
        side: artifact_version(Path(dirs[side]), m.content_hash) for side, m in manifests.items()
    }
    checkpoints = {side: m.training.checkpoint for side, m in manifests.items()}
    if loop.config.train.warm_start:
        for side, checkpoint in checkpoints.items():
            if not Path(checkpoint).is_file():
                raise RecstackError(
                    f"the serving {side}'s checkpoint {checkpoint} is gone; keep it for warm "
                    f"starts or set train.warm_start: false in {loop.path}"
                )
    # what the canary slot serves now: published back if a replica refuses the new models
    canary = _served(client, loop.canary) if loop.canary else None
    return {
        "dirs": dirs,
        "versions": versions,
        "canary": canary,
        "content_hashes": {side: m.content_hash for side, m in manifests.items()},
        "dataset": str(dataset),
        "dataset_hash": data.manifest.get(CONTENT_HASH),
        "cutoff": int(data.interactions[TS].max()) if data.interactions.height else -1,
        "checkpoints": checkpoints,
    }


def _served(client: AdminClient, model: str) -> dict:
    """{"dirs", "versions"} of what the service publishes for `model`."""
    dirs = client.served_dirs(model)
    return {
        "dirs": dirs,
        "versions": {
            side: artifact_version(Path(path), read_artifact_manifest(Path(path)).content_hash)
            for side, path in dirs.items()
        },
    }


def _dataset_of(loop: Loop, dirs: dict[str, str]) -> Path:
    """The dataset of the serving models: that of the promotion that published them, else the
    configured base (the models the service started with)."""
    for record in reversed(read_audit(loop.dir)):
        if record.get("decision") == PROMOTED and record["new"]["dirs"] == dirs:
            return Path(record["new"]["dataset"])
    return loop.base_dataset


def drift_trigger(loop: Loop, serving: dict, out: Path) -> dict:
    """`recstack monitor` of the serving ranker against the event log; what it breached."""
    from recstack.loop.monitor import EmptyWindow, run_monitor
    from recstack.loop.monitor_config import MonitorConfig

    trigger = loop.config.trigger
    try:
        report = run_monitor(
            loop.events,
            Path(serving["dirs"]["ranker"]),
            loop.monitor or MonitorConfig(),
            out,
            dataset=Path(serving["dataset"]),
            window=trigger.window if trigger else None,
        )
    except EmptyWindow as exc:
        return {"breached": [], "why": str(exc)}
    return {"breached": report["breached"], "report": report["files"]["json"]}


def _identity(parents: dict) -> str:
    """What a new dataset version holds: its base, the events added and the erasures."""
    key = [
        parents["base"][CONTENT_HASH],
        parents["event_log"]["events_sha256"],
        parents["counts"]["base_users_erased"],
        parents["feedback"],
    ]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _data(loop: Loop, run: RunState, serving: dict) -> dict:
    from recstack.datasets.extend import extend

    out = run.dir / "data"
    manifest = extend(Path(serving["dataset"]), loop.events, out, "auto", loop.config.feedback)
    if manifest is None and (out / "manifest.json").is_file():  # written before a kill
        manifest = load_dataset(out).manifest
    if manifest is None:
        return {"nothing_new": "no new events since the serving data's cut-off"}
    parents, identity = manifest["parents"], _identity(manifest["parents"])
    counts = parents["counts"]
    if counts["events_added"] < loop.config.min_new_events and not counts["base_users_erased"]:
        return {"nothing_new": f"{counts['events_added']} new event(s) < min_new_events"}
    for record in reversed(read_audit(loop.dir)):
        if record.get("data", {}).get("identity") == identity and record["decision"] in JUDGED:
            return {
                "nothing_new": f"these events were judged in run {record['run']} "
                f"({record['decision']})"
            }
    _holdout_or_stop(loop, out, serving)  # before any training: the judge needs one
    return {
        "dataset": str(out),
        "dataset_hash": manifest[CONTENT_HASH],
        "identity": identity,
        "counts": counts,
    }


def _train(loop: Loop, run: RunState, side: str, data: dict, serving: dict) -> dict:
    from recstack.training.train_cli import train

    spec = getattr(loop.config.train, side)
    run_dir = run.dir / "train" / side
    argv = ["--config", str(spec.config), "--data.dataset", data["dataset"]]
    argv += ["--run_dir", str(run_dir), "--baselines", "false"]
    if spec.max_epochs:
        argv += ["--trainer.max_epochs", str(spec.max_epochs)]
    if loop.config.train.warm_start:
        argv += ["--init_from", serving["checkpoints"][side]]
    if (run_dir / "checkpoints" / "last.ckpt").is_file():  # killed mid-training: resume
        argv += ["--ckpt_path", "last"]
    report = train([*argv, *spec.args])
    return {
        "checkpoint": report["best_checkpoint"],
        "run_dir": str(run_dir),
        "test": report.get("test"),
    }


def _export(loop: Loop, run: RunState, data: dict) -> dict:
    from recstack.training.export.export_cmd import export

    dirs = {}
    for side in SIDES:
        checkpoint = Path(run.result(TRAIN_STEP[side])["checkpoint"])
        out = loop.dir / "artifacts" / side / run.id
        dirs[side] = str(export(checkpoint, out, overwrite=True, dataset=Path(data["dataset"])))
    return {"dirs": {side: str(Path(path).resolve()) for side, path in dirs.items()}}


def _holdout_since(loop: Loop, serving: dict) -> int:
    since = loop.config.holdout_since
    return serving["cutoff"] if since is None else since


def _holdout_or_stop(loop: Loop, dataset: Path, serving: dict) -> None:
    """DataError (one line) when the new dataset has no holdout users to judge on."""
    from recstack.serving.pipeline_eval import holdout

    holdout(load_dataset(dataset), "loo", "test", _holdout_since(loop, serving))


def _judge(loop: Loop, run: RunState, data: dict, serving: dict, new_dirs: dict) -> dict:
    from recstack.serving.pipeline_eval import eval_artifacts

    since = _holdout_since(loop, serving)
    reports = {}
    for name, dirs in (("serving", serving["dirs"]), ("new", new_dirs)):
        console.print(f"[bold]{name} pipeline[/bold] on the holdout after ts {since}")
        reports[name] = eval_artifacts(
            Path(dirs["retriever"]),
            Path(dirs["ranker"]),
            Path(data["dataset"]),
            retrieve_n=loop.retrieve_n,
            history_limit=loop.history_limit,
            ks=sorted({10, loop.config.gate.k}),
            since=since,
            latency_requests=loop.config.gate.latency_requests,
            out=run.dir / "judge" / f"{name}.json",
        )
    return {"since": since, "reports": {k: v["out"] for k, v in reports.items()}}


def _summary(report: dict, k: int, retrieve_n: int) -> dict:
    return {
        f"ndcg@{k}": report["pipeline"][f"ndcg@{k}"],
        f"hr@{k}": report["pipeline"][f"hr@{k}"],
        f"recall@{retrieve_n}": report["retrieval"][f"recall@{retrieve_n}"],
        "ranker_full_ndcg@10": report["ranker_full"]["ndcg@10"],
        "latency_p99_ms": (report.get("latency") or {}).get("p99_ms"),
        "users": report["n_users"],
        "versions": {side: report["artifacts"][side]["version"] for side in SIDES},
    }


def _gate(loop: Loop, judge: dict, new_dirs: dict) -> dict:
    reports = {k: json.loads(Path(v).read_text()) for k, v in judge["reports"].items()}
    manifests = {side: read_artifact_manifest(Path(new_dirs[side])) for side in SIDES}
    checks = gate_checks(
        loop.config.gate, reports["serving"], reports["new"], manifests, loop.retrieve_n
    )
    for check in checks:
        mark = "[green]pass[/green]" if check["passed"] else "[red]FAIL[/red]"
        console.print(f"{mark} {check['name']}: {check['detail']}")
    k = loop.config.gate.k
    return {
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
        "metrics": {name: _summary(r, k, loop.retrieve_n) for name, r in reports.items()},
    }


def _promote(loop: Loop, client: AdminClient, model: str, new: dict, old: dict) -> dict:
    """Publish `new` (dirs, versions) under `model`; if a replica refuses, publish `old` back."""
    timeout = loop.config.promote.timeout_s
    generation = client.publish(model, new["dirs"])
    swap = client.wait_swapped(model, generation, new["versions"], timeout)
    decision = PROMOTED if model == loop.model else CANARY
    if swap.ok:
        console.print(
            f"[green]{decision}[/green] as {model!r}: generation {generation} on "
            f"{swap.replicas} replicas"
        )
        return {"decision": decision, "model": model, "generation": generation,
                "replicas": swap.replicas}  # fmt: skip
    console.print(f"[red]publication failed[/red]: {'; '.join(swap.problems)}; rolling back")
    back = client.publish(model, old["dirs"])
    restored = client.wait_swapped(model, back, old["versions"], timeout)
    return {
        "decision": ROLLED_BACK,
        "model": model,
        "generation": back,
        "reasons": swap.problems,
        "restored": restored.ok,
        "restore_problems": restored.problems,
    }


def _finish(loop: Loop, run: RunState, record: dict) -> dict:
    """Append the audit record, then mark the run finished (a kill in between appends it
    again on the rerun: the audit may hold a run twice, never lose one)."""
    append_audit(loop.dir, record)
    run.record("decision", {"decision": record["decision"]})
    return record


def _print_verdict(record: dict, loop: Loop) -> None:
    where = loop.dir / "audit.jsonl"
    if record["decision"] in (PROMOTED, CANARY):
        model = record.get("model", loop.model)
        console.print(
            f"[green]{record['decision']}[/green] run {record['run']} as {model!r}; audit: {where}"
        )
    else:
        console.print(f"[yellow]{record['decision']}[/yellow] run {record['run']}:")
        for reason in record.get("reasons", []):
            console.print(f"  - {reason}")
        console.print(f"audit: {where}")


def run_retrain(loop: Loop) -> dict | None:
    """One pass of the loop; returns the audit record, or None when there was nothing new."""
    client = AdminClient(loop.service, loop.key(), loop.config.promote.request_timeout_s)
    run = open_run(loop.dir)
    serving = _step(run, "serving", lambda: _serving(loop, client))
    trigger = None
    if loop.monitor is not None:
        out = loop.dir / "monitor" / run.id
        trigger = _step(run, "trigger", lambda: drift_trigger(loop, serving, out))
        if not trigger["breached"]:
            console.print(f"no drift: {trigger.get('why', 'no monitor threshold breached')}")
            shutil.rmtree(run.dir, ignore_errors=True)
            return None
    data = _step(run, "data", lambda: _data(loop, run, serving))
    if "nothing_new" in data:
        console.print(f"nothing to do: {data['nothing_new']}")
        shutil.rmtree(run.dir, ignore_errors=True)
        return None
    for side in ("ranker", "retriever"):
        _step(run, TRAIN_STEP[side], lambda side=side: _train(loop, run, side, data, serving))
    new_dirs = _step(run, "export", lambda: _export(loop, run, data))["dirs"]
    judge = _step(run, "judge", lambda: _judge(loop, run, data, serving, new_dirs))
    gate = _step(run, "gate", lambda: _gate(loop, judge, new_dirs))
    metrics = gate["metrics"]
    versions = {name: metrics[name]["versions"] for name in ("serving", "new")}
    if gate["passed"]:
        model = loop.canary or loop.model
        old = serving["canary"] if loop.canary else serving
        new = {"dirs": new_dirs, "versions": versions["new"]}
        outcome = _step(run, "promote", lambda: _promote(loop, client, model, new, old))
    else:
        outcome = {"decision": REFUSED, "reasons": failed(gate["checks"])}
    record = {
        "run": run.id,
        "at": _now(),
        **outcome,
        "serving": {k: serving[k] for k in ("dirs", "dataset", "dataset_hash")}
        | {"versions": versions["serving"]},
        "new": {"dirs": new_dirs, "dataset": data["dataset"], "dataset_hash": data["dataset_hash"]}
        | {"versions": versions["new"]},
        "data": {"identity": data["identity"], "counts": data["counts"]},
        "holdout_since": judge["since"],
        "metrics": metrics,
        "checks": gate["checks"],
    }
    if trigger is not None:
        record["trigger"] = trigger
    _finish(loop, run, record)
    _print_verdict(record, loop)
    return record


def roll_back(loop: Loop) -> dict:
    """Publish what served before the latest promotion still in effect."""
    promotions: list[dict] = []
    for record in read_audit(loop.dir):
        if record.get("decision") == PROMOTED:
            promotions.append(record)
        elif record.get("decision") == ROLLBACK and promotions:
            promotions.pop()
    if not promotions:
        raise RecstackError(f"nothing to roll back: {loop.dir / 'audit.jsonl'} has no promotion")
    undone = promotions[-1]
    client = AdminClient(loop.service, loop.key(), loop.config.promote.request_timeout_s)
    dirs = undone["serving"]["dirs"]
    generation = client.publish(loop.model, dirs)
    swap = client.wait_swapped(
        loop.model, generation, undone["serving"]["versions"], loop.config.promote.timeout_s
    )
    record = {
        "run": undone["run"],
        "at": _now(),
        "decision": ROLLBACK,
        "restored": {"dirs": dirs, "versions": undone["serving"]["versions"]},
        "generation": generation,
        "replicas_swapped": swap.ok,
        "reasons": swap.problems,
    }
    append_audit(loop.dir, record)
    state = "every replica serves them" if swap.ok else "; ".join(swap.problems)
    console.print(f"rolled back run {undone['run']}: published {dirs} ({state})")
    return record


def promote_canary(loop: Loop) -> dict:
    """Make the latest canary the default model (after its experiment arm has been watched)."""
    if not loop.canary:
        raise RecstackError(f"{loop.path} has no promote.canary_model; there is no canary")
    records = read_audit(loop.dir)
    done = {r.get("from_canary") for r in records}
    canaries = [r for r in records if r.get("decision") == CANARY and r["run"] not in done]
    if not canaries:
        raise RecstackError(f"no canary waits in {loop.dir / 'audit.jsonl'}")
    canary = canaries[-1]
    client = AdminClient(loop.service, loop.key(), loop.config.promote.request_timeout_s)
    arms = client.experiment_report().get("arms", {})
    for name, arm in arms.items():
        if arm.get("model") in (loop.model, loop.canary):
            console.print(f"arm {name} ({arm['model']}): {arm.get('impressions', 0)} "
                          f"impressions, {arm.get('clicks', 0)} clicks, CTR {arm.get('ctr')}")  # fmt: skip
    serving = _served(client, loop.model)
    new = {k: canary["new"][k] for k in ("dirs", "versions")}
    outcome = _promote(loop, client, loop.model, new, serving)
    record = {
        "run": canary["run"],
        "at": _now(),
        **outcome,
        "from_canary": canary["run"],
        "serving": {**serving, "dataset": canary["serving"]["dataset"]},
        "new": canary["new"],
        "metrics": canary.get("metrics"),
        "experiment": arms,
    }
    append_audit(loop.dir, record)
    _print_verdict(record, loop)
    return record


def print_history(loop: Loop) -> list[dict]:
    records = read_audit(loop.dir)
    k, n = loop.config.gate.k, loop.retrieve_n
    table = Table(title=f"{loop.dir / 'audit.jsonl'}")
    for column in ("run", "at", "decision", f"NDCG@{k} old→new", f"recall@{n} old→new", "why"):
        table.add_column(column)
    for r in records:
        metrics = r.get("metrics") or {}
        old, new = metrics.get("serving", {}), metrics.get("new", {})

        def pair(key: str, old=old, new=new) -> str:
            return f"{old[key]:.4f} → {new[key]:.4f}" if key in old and key in new else ""

        why = "; ".join(r.get("reasons") or []) or (
            f"generation {r['generation']}" if "generation" in r else ""
        )
        table.add_row(
            r.get("run", ""),
            r.get("at", ""),
            r["decision"],
            pair(f"ndcg@{k}"),
            pair(f"recall@{n}"),
            why,
        )
    Console(soft_wrap=True).print(table if records else f"no retrain recorded yet in {loop.dir}")
    return records


def retrain_cli(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="recstack retrain",
        description="Retrain from the service's event log, judge against the serving pipeline, "
        "gate, and promote or refuse, with an audit trail (README: Keeping models fresh).",
    )
    parser.add_argument("--config", type=Path, required=True, help="loop YAML (configs/loop/)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--history", action="store_true", help="print the audit trail and exit")
    what.add_argument(
        "--rollback", action="store_true", help="publish the models the last promotion replaced"
    )
    what.add_argument(
        "--promote-canary",
        action="store_true",
        help="make the latest canary (promote.canary_model) the default model",
    )
    args = parser.parse_args(argv)
    loop = read_loop_config(args.config)
    if args.history:
        print_history(loop)
        return
    loop.dir.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(loop.dir / "retrain.lock", timeout=0):
            if args.rollback:
                record = roll_back(loop)
            elif args.promote_canary:
                record = promote_canary(loop)
            else:
                record = run_retrain(loop)
    except Timeout:
        raise RecstackError(f"another retrain of {loop.dir} is running") from None
    if record and record["decision"] == ROLLED_BACK:  # a refusal is an answer; this is a fault
        raise RecstackError(f"promotion of run {record['run']} failed and was rolled back")
