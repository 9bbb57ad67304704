"""Before and after each change made to the serving request path for a steady tail latency:
the code before the change is loaded from git (`--before`, a commit), the code after is this
checkout's, and both run the same workload in this process (or two processes for the store).

    .venv/bin/python benchmarks/stall_fixes.py                   # ~4 min, before = 4039bdb

1. event_log_seal: one writer appends one event at a time at 60/s for 60 s; a segment fills
   every 600 events (a seal every 10 s). Before: the append that fills a segment seals it (read
   the Arrow file, write Parquet, fsync) under the append lock. After: it only ends the
   segment; a background thread seals it. Figure: append latency p50/p99/max.
2. store_checkpoint: two processes share one SQLite store, each reading and writing a random
   user's history at 100/s for 60 s (what recommend and events do). Before: SQLite's automatic
   checkpoint runs inside a commit (copying the WAL back with an fsync). After: a background
   thread checkpoints. Figure: per-call latency p99/max on the request path.
3. auth_dependency: CPU per request of the API-key check as FastAPI runs it, sync (before: a
   thread-pool hop per request) and async (after), on a minimal app with the same dependency.
4. gc_freeze: a worker holding a 1M-item catalogue (ids list and id -> index dict, as the
   serving Catalog does) with request-like allocation churn: full-collection pauses without
   and with gc.freeze() after the load (uvicorn workers now freeze; Ray replicas did already).
Writes benchmarks/results/stall_fixes.json.
"""

import argparse
import asyncio
import gc
import importlib.util
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine_info import machine
from open_loop import summarise

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def file_at(commit: str, path: str) -> Path:
    """A copy of the repo's file `path` as it was at `commit`."""
    source = subprocess.run(
        ["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    file = Path(tempfile.mkdtemp(prefix="stall-before-")) / Path(path).name
    file.write_text(source)
    return file


def write_results(benchmark: str, before: str, results: dict, out: Path, **extra) -> None:
    """Write a before/after benchmark's JSON (the "after" side is this checkout's commit) and
    print its results."""
    after = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    document = {"benchmark": benchmark, "machine": machine(), "before_commit": before,
                "after_commit": after, **extra, "results": results}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(results, indent=1))


def module_from(file: Path, name: str):
    """Load a module from a file (it imports today's recstack for what it does not define)."""
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def paced(rate: float, seconds: float, call) -> np.ndarray:
    """Call `call()` at `rate`/s for `seconds`; each call's latency in ms."""
    times, start = [], time.perf_counter()
    for i in range(int(rate * seconds)):
        time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1000)
    return np.array(times)


# ------------------------------------------------------------------------- 1. event log


def event_log_seal(event_log_module, seconds: float) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="stall-log-"))
    log = event_log_module.EventLog(folder, writer="bench", segment_max_events=600)
    counter = iter(range(10**9))

    def append() -> None:
        i = next(counter)
        log.append([{"user_id": f"u{i % 500}", "item_id": f"i{i}", "type": "view", "ts": i}])

    latency = paced(60, seconds, append)
    log.close()
    return summarise(latency)


# ------------------------------------------------------------------------- 2. store


def _store_worker(module_path: str, db: str, seconds: float, out) -> None:
    store = module_from(Path(module_path), "store_under_test").EmbeddedStore(db)
    rng = np.random.default_rng()

    def call() -> None:
        user = f"user{rng.integers(5000)}"
        store.histories([user], 200)
        store.extend_histories({user: [f"item{rng.integers(10**6)}"]})

    out.put(paced(100, seconds, call).tolist())
    store.close()


def store_checkpoint(module_path: str, seconds: float) -> dict:
    db = str(Path(tempfile.mkdtemp(prefix="stall-store-")) / "state.sqlite")
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [
        context.Process(target=_store_worker, args=(module_path, db, seconds, out))
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    latency = np.concatenate([np.array(out.get()) for _ in workers])
    for w in workers:
        w.join()
    return summarise(latency)


# ------------------------------------------------------------------------- 3. auth dependency


def auth_dependency(calls: int) -> dict:
    """CPU µs per request of a FastAPI app whose only work is the key check, sync vs async."""
    from fastapi import Depends, FastAPI

    def check_sync() -> None:
        return None

    async def check_async() -> None:
        return None

    out = {}
    for name, check in (("sync (before)", check_sync), ("async (after)", check_async)):
        app = FastAPI()

        @app.get("/x", dependencies=[Depends(check)])
        async def endpoint() -> dict:
            return {}

        out[name] = _asgi_cpu_us(app, calls)
    return out


def _asgi_cpu_us(app, calls: int) -> float:
    scope = {"type": "http", "method": "GET", "path": "/x", "raw_path": b"/x", "headers": [],
             "query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": "",
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}  # fmt: skip

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        return None

    async def run() -> float:
        for _ in range(200):  # warm-up
            await app(dict(scope), receive, send)
        cpu = time.process_time()
        for _ in range(calls):
            await app(dict(scope), receive, send)
        return (time.process_time() - cpu) / calls * 1e6

    return asyncio.run(run())


# ------------------------------------------------------------------------- 4. gc freeze


def gc_pauses(freeze: bool, seconds: float) -> dict:
    """Full-collection pauses of a process holding a 1M-item vocabulary under churn."""
    item_ids = ["", *(f"item-{i:07d}" for i in range(1_000_000))]
    index = {item: i for i, item in enumerate(item_ids)}  # noqa: F841 (held, as serving holds it)
    holder = [[f"t{i}", i] for i in range(200_000)]  # other long-lived objects (lists: tracked)
    gc.collect()
    if freeze:
        gc.freeze()
    pauses, started = [], {}

    def timer(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started["t"] = time.perf_counter()
        elif "t" in started:
            pauses.append((time.perf_counter() - started.pop("t")) * 1000)

    gc.callbacks.append(timer)
    end, garbage = time.perf_counter() + seconds, []
    while time.perf_counter() < end:  # request-like churn: small dicts and lists, some cyclic
        garbage.append([{"a": [1, 2, 3]} for _ in range(50)])
        loop = []
        loop.append(loop)
        if len(garbage) > 2000:
            garbage.clear()
    gc.callbacks.remove(timer)
    gc.unfreeze()
    del holder
    return {"full_collections": len(pauses), **summarise(np.array(pauses))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", default="4039bdb", help="the commit before the changes")
    parser.add_argument("--seconds", type=float, default=60.0, help="per workload and side")
    parser.add_argument("--out", type=Path, default=RESULTS / "stall_fixes.json")
    args = parser.parse_args(argv)

    import pyarrow as pa

    from recstack.event_log_format import ADDED_COLUMNS, EVENT_SCHEMA
    from recstack.serving import event_log
    from recstack.serving.store import embedded

    old_log = module_from(file_at(args.before, "serving/event_log.py"), "event_log_before")
    # the old writer fills the columns of its day; readers add the later ones as nulls
    old_log.EVENT_SCHEMA = pa.schema(f for f in EVENT_SCHEMA if f.name not in ADDED_COLUMNS)
    old_store = file_at(args.before, "serving/store/embedded.py")
    results = {
        "event_log_seal": {
            "before": event_log_seal(old_log, args.seconds),
            "after": event_log_seal(event_log, args.seconds),
        },
        "store_checkpoint": {
            "before": store_checkpoint(str(old_store), args.seconds),
            "after": store_checkpoint(embedded.__file__, args.seconds),
        },
        "auth_dependency_cpu_us_per_request": auth_dependency(20_000),
        "gc_full_collection_ms": {
            "before": gc_pauses(False, args.seconds / 2),
            "after": gc_pauses(True, args.seconds / 2),
        },
    }
    write_results("stall_fixes", args.before, results, args.out, seconds=args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
