"""Latency of `POST /v1/recommend` on ML-100K: in-process, Ray Serve, and uvicorn engines.

    .venv/bin/python benchmarks/serve_bench.py                 # 200 req/s for 30 s, ~5 min
    .venv/bin/python benchmarks/serve_bench.py --rates 100 200 400 --duration 20 --engines uvicorn

1. In-process: the same RecommendService the ingress runs (store read, arm, two-tower
   retrieval of 100, SASRec ranking of 10) with the models in this process: no HTTP, no Ray.
2. Over HTTP, for each engine of `recstack serve` on the same Serve config
   (configs/serve_ml100k.yaml, state moved to a temp dir, a free port): 300 sequential calls
   (the floor), then open-loop load at each rate (benchmarks/open_loop.py: latency from
   each request's scheduled send time). `ray`: Ingress -> Retriever -> Ranker deployments,
   once per @serve.batch size in --max-batch-sizes; `uvicorn`: the same API in --workers
   processes with the models in-process. Client and server share this machine's cores.

Needs the artifacts the config names (README: train + export) and data/ml-100k. Writes
benchmarks/results/serve_ml100k.json.
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from open_loop import Call, account, run_open_loop, summarise

from recstack.serving import schemas, serve_cmd
from recstack.serving.backend import LocalBackend
from recstack.serving.config import read_serve_config
from recstack.serving.service import build_service

RESULTS = Path(__file__).parent / "results"
TARGETS_MS = {"p50": 5.0, "p99": 15.0}


def in_process(checked: dict, users: list[str], state: Path, n: int) -> dict:
    """Per-call latency of RecommendService.recommend with local models."""
    models = checked["models"]
    args = checked["args"].model_copy(  # this run's own state, beside the HTTP runs'
        update={
            "store": {"kind": "embedded", "path": str(state / "inproc.sqlite")},
            "event_log": state / "inproc-events",
        }
    )
    service = build_service(
        args,
        lambda _store: LocalBackend(models["retriever"].models, models["ranker"].models),
        "inproc",
    )
    rng = random.Random(0)

    async def run() -> np.ndarray:
        times = []
        for i in range(n + 100):
            request = schemas.RecommendRequest(user_id=rng.choice(users), k=10)
            start = time.perf_counter()
            await service.recommend(request)
            if i >= 100:  # warm-up
                times.append((time.perf_counter() - start) * 1000)
        return np.array(times)

    latency = asyncio.run(run())
    return {"calls": n, "latency_ms": summarise(latency), "mean_ms": float(latency.mean())}


def http_config(config: Path, state: Path, port: int, max_batch_size: int) -> Path:
    """The config with its state (store, event log) in `state`, a port and a batch size."""
    document = yaml.safe_load(config.read_text())
    document["http_options"] = {"host": "127.0.0.1", "port": port}
    args = document["applications"][0]["args"]
    args["store"] = {"kind": "embedded", "path": str(state / "state.sqlite")}
    args["event_log"] = str(state / "events")
    for deployment in document["applications"][0]["deployments"]:
        if "models" in deployment.get("user_config", {}):
            deployment["user_config"]["max_batch_size"] = max_batch_size
    out = state / "serve.yaml"
    out.write_text(yaml.safe_dump(document))
    return out


def sequential(url: str, key: str, users: list[str], n: int) -> dict:
    """One request at a time (no queueing): the floor of the HTTP + Ray latency."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    rng, times = random.Random(2), []
    for i in range(n + 20):
        start = time.perf_counter()
        session.post(
            url + "/v1/recommend", json={"user_id": rng.choice(users), "k": 10}, timeout=10
        )
        if i >= 20:
            times.append((time.perf_counter() - start) * 1000)
    return {"calls": n, "latency_ms": summarise(np.array(times))}


@contextlib.contextmanager
def running(engine: str, config: Path, state: Path, workers: int):
    """The service on `engine` for the duration of the block; yields its base URL."""
    if engine == "ray":
        try:
            yield serve_cmd.start(config, temp_dir=state / "ray")
        finally:
            serve_cmd.stop()
        return
    command = [sys.executable, "-m", "recstack.cli", "serve", "--config", str(config)]
    server = subprocess.Popen([*command, "--engine", "uvicorn", "--workers", str(workers)])
    try:
        port = yaml.safe_load(config.read_text())["http_options"]["port"]
        url = f"http://127.0.0.1:{port}"
        serve_cmd.wait_ready(url)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def http_runs(args, users: list[str], state: Path, key: str, engine: str, batch: int) -> dict:
    """Start the app on `engine`, then sequential calls and each open-loop rate."""
    config = http_config(args.config, state, free_port(), batch)
    out = {"engine": engine, "rates": []}
    if engine == "ray":
        out["max_batch_size"] = batch
    else:
        out["workers"] = args.workers
    rng = random.Random(1)
    with running(engine, config, state, args.workers) as url:
        out["sequential"] = sequential(url, key, users, 300)
        print(f"{engine} (batch {batch}): sequential {out['sequential']['latency_ms']}")
        for rate in args.rates:
            draws = rng.choices(users, k=round(rate * (args.duration + args.warmup)) + 1)
            timeline = run_open_loop(
                url,
                rate,
                args.duration,
                args.warmup,
                lambda i, draws=draws: Call(
                    "recommend", "POST", "/v1/recommend", {"user_id": draws[i], "k": 10}
                ),
                headers={"Authorization": f"Bearer {key}"},
            )
            run = {"offered_rps": rate, **account(timeline), "warmup": timeline.warmup}
            lat = run["latency_ms"]
            run["meets_targets"] = run["errors"] == 0 and all(
                lat[p] is not None and lat[p] <= t for p, t in TARGETS_MS.items()
            )
            out["rates"].append(run)
            print(f"  {rate:.0f} req/s: ok {run['ok']}/{run['sent']}, latency ms {lat}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("configs/serve_ml100k.yaml"))
    parser.add_argument("--users-from", type=Path, default=Path("data/ml-100k/users.parquet"))
    parser.add_argument("--rates", type=float, nargs="+", default=[200.0])
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--in-process-calls", type=int, default=2000)
    parser.add_argument(
        "--engines", nargs="+", default=["ray", "uvicorn"], choices=["ray", "uvicorn"]
    )
    parser.add_argument("--workers", type=int, default=2, help="uvicorn engine: worker processes")
    parser.add_argument(
        "--max-batch-sizes",
        type=int,
        nargs="+",
        default=[32, 1],
        help="@serve.batch sizes to compare",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_ml100k.json")
    args = parser.parse_args(argv)

    checked = read_serve_config(args.config)
    users = [
        str(u) for u in pq.read_table(args.users_from, columns=["user_id"])["user_id"].to_pylist()
    ]
    state = Path(tempfile.mkdtemp(prefix="recstack-serve-bench-"))
    result = {
        "benchmark": "serve_ml100k",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "python": platform.python_version(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "serve_config": checked["document"],
        "targets_ms": TARGETS_MS,
    }
    result["in_process"] = in_process(checked, users, state, args.in_process_calls)
    print(f"in-process: {result['in_process']['latency_ms']}")

    key = secrets.token_urlsafe(24)
    os.environ["RECSTACK_APP_KEYS"] = key
    runs = [("ray", batch) for batch in args.max_batch_sizes if "ray" in args.engines]
    runs += [("uvicorn", 1)] if "uvicorn" in args.engines else []
    result["http"] = []
    for engine, batch in runs:
        shutil.rmtree(state / "events", ignore_errors=True)  # each run starts from a fresh log
        result["http"].append(http_runs(args, users, state, key, engine, batch))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
