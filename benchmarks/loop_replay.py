"""The retrain loop on real data: ML-100K cut in time, the rest replayed as live traffic.

    .venv/bin/python benchmarks/loop_replay.py [--dataset data/ml-100k] [--cut 0.9] \
        [--out benchmarks/results/loop_replay_ml100k.json]

1. base: the interactions before the cut (a quantile of ts), prepared as a dataset with
   ML-100K's item and user files;
2. SASRec and the two-tower trained on it with the shipped configs (epochs capped), exported;
3. served with Ray Serve (configs/serve_demo.yaml's layout: HAProxy, colocated pipeline);
4. the interactions after the cut posted through POST /v1/events as rating events;
5. `recstack retrain` with configs/loop/ml100k.yaml (its gate and train settings, the paths of
   this run), timed as one command; its state.json gives each step's seconds.

Writes JSON: counts, timings, the serving and new pipeline's figures on the holdout (the newest
events), the gate's checks and the decision. About 15 min on 2 cores.
"""

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import requests
import yaml
from machine_info import machine

from recstack.cli import main as recstack
from recstack.datasets.prepare import prepare
from recstack.datasets.sources.tabular import ColumnMapping
from recstack.schema import ITEM_ID, ITEM_IDX, TS, USER_ID, USER_IDX
from recstack.serving import serve_cmd
from recstack.serving.auth import APP, KEY_ENV, MODELS

ROOT = Path(__file__).resolve().parents[1]
LOOP_CONFIG = ROOT / "configs" / "loop" / "ml100k.yaml"
SERVE_CONFIG = ROOT / "configs" / "serve_demo.yaml"


def base_and_replay(dataset: Path, cut: float, work: Path) -> tuple[Path, pl.DataFrame, int]:
    """The base dataset (events with ts <= the cut) and the events after it, with ids."""
    frame = pl.read_parquet(dataset / "interactions.parquet")
    users = pl.read_parquet(dataset / "users.parquet")
    items = pl.read_parquet(dataset / "items.parquet")
    events = frame.join(users.select(USER_IDX, USER_ID), on=USER_IDX).join(
        items.select(ITEM_IDX, ITEM_ID), on=ITEM_IDX
    )
    cut_ts = int(events[TS].quantile(cut, "lower"))
    columns = [USER_ID, ITEM_ID, TS, "rating"]
    events.filter(pl.col(TS) <= cut_ts).select(columns).write_parquet(work / "base.parquet")
    items.drop(ITEM_IDX).write_parquet(work / "items.parquet")
    users.drop(USER_IDX).write_parquet(work / "users.parquet")
    base = work / "data-base"
    prepare(
        f"parquet:{work / 'base.parquet'}",
        base,
        columns=ColumnMapping(USER_ID, ITEM_ID, TS, rating="rating"),
        items=work / "items.parquet",
        users=work / "users.parquet",
        quiet=True,
        overwrite=True,
    )
    replay = events.filter(pl.col(TS) > cut_ts).select(columns).sort(TS)
    return base, replay, cut_ts


def train_and_export(config: Path, dataset: Path, work: Path, name: str, epochs: int) -> Path:
    run = work / f"run-{name}"
    args = ["--config", str(config), "--data.dataset", str(dataset), "--run_dir", str(run)]
    assert recstack(["train", *args, "--trainer.max_epochs", str(epochs)]) == 0
    out = work / "artifacts" / name / "v1"
    ckpt = run / "checkpoints" / "best.ckpt"
    assert recstack(["export", "--ckpt", str(ckpt), "--out", str(out), "--overwrite", "true"]) == 0
    return out


def serve_config(work: Path, base: Path, artifacts: dict[str, Path]) -> Path:
    document = yaml.safe_load(SERVE_CONFIG.read_text())
    state = work / "serve"
    document["http_options"]["port"] = 8000 + secrets.randbelow(1000)
    app = document["applications"][0]
    app["args"] |= {
        "store": {"kind": "embedded", "path": str(state / "state.sqlite")},
        "event_log": str(state / "events"),
        "seed_histories_from": str(base),
    }
    models = app["deployments"][0]["user_config"]
    for side in ("retriever", "ranker"):
        models[side]["models"]["main"] = str(artifacts[side])
    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def post(url: str, key: str, replay: pl.DataFrame) -> float:
    started = time.perf_counter()
    rows = replay.to_dicts()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    for start in range(0, len(rows), 1000):
        events = [
            {"user_id": str(r[USER_ID]), "item_id": str(r[ITEM_ID]), "type": "rating",
             "ts": int(r[TS]), "context": {"rating": float(r["rating"])}}
            for r in rows[start : start + 1000]
        ]  # fmt: skip
        reply = session.post(f"{url}/v1/events", json={"events": events}, timeout=60)
        reply.raise_for_status()
    return time.perf_counter() - started


def loop_config(work: Path, serve: Path, url: str) -> Path:
    document = yaml.safe_load(LOOP_CONFIG.read_text())
    document |= {"loop_dir": str(work / "loop"), "serve_config": str(serve), "service": url}
    for side in ("ranker", "retriever"):
        document["train"][side]["config"] = str(ROOT / document["train"][side]["config"])
    path = work / "loop.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=ROOT / "data" / "ml-100k")
    parser.add_argument("--cut", type=float, default=0.9, help="ts quantile of the base's end")
    parser.add_argument("--ranker-epochs", type=int, default=60, help="base SASRec epochs (cap)")
    parser.add_argument("--retriever-epochs", type=int, default=10)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "loop-replay")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/loop_replay_ml100k.json"
    )
    args = parser.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    seconds: dict[str, float] = {}

    tick = time.perf_counter()
    base, replay, cut_ts = base_and_replay(args.dataset.resolve(), args.cut, work)
    seconds["base_prepare"] = time.perf_counter() - tick
    tick = time.perf_counter()
    artifacts = {
        "ranker": train_and_export(ROOT / "configs/train/sasrec_ml100k.yaml", base, work,
                                   "sasrec", args.ranker_epochs),
        "retriever": train_and_export(ROOT / "configs/train/two_tower_ml100k.yaml", base, work,
                                      "two-tower", args.retriever_epochs),
    }  # fmt: skip
    seconds["base_train_export"] = time.perf_counter() - tick

    keys = {scope: secrets.token_urlsafe(24) for scope in (APP, MODELS)}
    os.environ.update({KEY_ENV[scope]: key for scope, key in keys.items()})
    os.environ["RECSTACK_MODELS_KEY"] = keys[MODELS]
    serve = serve_config(work, base, artifacts)
    try:
        url = serve_cmd.start(serve, temp_dir=Path(f"/tmp/rs-replay-{os.getpid()}"))
        seconds["replay_post"] = post(url, keys[APP], replay)
        time.sleep(6)  # the log seals its open segment on age (5 s)
        tick = time.perf_counter()
        command = [sys.executable, "-m", "recstack.cli", "retrain", "--config"]
        proc = subprocess.run([*command, str(loop_config(work, serve, url))], check=False)
        seconds["retrain"] = time.perf_counter() - tick
        served = requests.get(
            f"{url}/v1/admin/models",
            headers={"Authorization": f"Bearer {keys[MODELS]}"},
            timeout=10,
        ).json()
    finally:
        serve_cmd.stop()
    [record] = [
        json.loads(line) for line in (work / "loop" / "audit.jsonl").read_text().splitlines()
    ]
    [state] = list((work / "loop" / "runs").glob("*/state.json"))
    steps = json.loads(state.read_text())["steps"]
    payload = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "dataset": str(args.dataset),
        "cut_quantile": args.cut,
        "cut_ts": cut_ts,
        "events_replayed": replay.height,
        "retrain_exit_code": proc.returncode,
        "decision": record["decision"],
        "reasons": record.get("reasons", []),
        "data_counts": record["data"]["counts"],
        "holdout_since": record["holdout_since"],
        "metrics": record["metrics"],
        "checks": record["checks"],
        "published_after": served["published"],
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "retrain_step_seconds": {k: v.get("seconds") for k, v in steps.items() if "seconds" in v},
        "loop_config": yaml.safe_load(LOOP_CONFIG.read_text()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n")
    print(json.dumps({k: payload[k] for k in ("decision", "metrics", "seconds")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
