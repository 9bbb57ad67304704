"""The same HTTP API without Ray: uvicorn worker processes, each running the retriever and
ranker in-process (`recstack serve --config <yaml> --engine uvicorn --workers 2`).

The no-Ray mode for one machine (benchmarks/engine_compare.py measures both engines side by
side; the README says which to use when). The config is the Serve YAML itself:
http_options, applications[0].args, and the models (the Ingress's `user_config`, or the
Retriever / Ranker ones in a split pipeline). Workers share
the online store (SQLite WAL or Redis) and the event log directory, so a recommendation sees
an event posted to any worker; models change through `POST /v1/admin/models`
(serving/model_watch.py), as on Ray. Once a worker's models are loaded, the objects it holds
are frozen out of the garbage collector's scans (gc.freeze), as Ray does for its replicas.
Workers die with the `recstack serve` process (Linux's parent-death signal): a parent killed
with kill -9 must not leave them holding the port. SIGTERM or Ctrl-C stops them gracefully,
which seals each worker's event-log segment (api.py's lifespan).
"""

import contextlib
import ctypes
import gc
import os
import signal
import sys
from pathlib import Path

from fastapi import FastAPI

from recstack.serving import metrics
from recstack.serving.api import attach, make_api
from recstack.serving.auth import ApiKeys
from recstack.serving.backend import LocalBackend, use_onnxruntime
from recstack.serving.config import read_serve_config
from recstack.serving.http_protocol import KEEP_ALIVE_S, HeaderTimeoutProtocol
from recstack.serving.service import build_service

CONFIG_ENV = "RECSTACK_SERVE_CONFIG"  # how the parent hands the config path to the workers
WORKERS_ENV = "RECSTACK_SERVE_WORKERS"  # …and the number of workers (onnxruntime "auto")
PARENT_ENV = "RECSTACK_SERVE_PARENT"  # …and its pid: a worker stops when that process is gone
PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_parent() -> None:
    """SIGTERM this worker when the process that started it dies, however it dies."""
    parent = int(os.environ.get(PARENT_ENV, "0"))
    if parent in (0, os.getpid()) or not sys.platform.startswith("linux"):
        return  # one worker runs inside `recstack serve` itself
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def build_local_app() -> FastAPI:
    """uvicorn factory: one worker's app, from the config named by $RECSTACK_SERVE_CONFIG."""
    _die_with_parent()
    checked = read_serve_config(Path(os.environ[CONFIG_ENV]))
    args = checked["args"]
    workers = int(os.environ.get(WORKERS_ENV, "1"))
    use_onnxruntime(args.onnxruntime, (os.cpu_count() or 1) / workers)
    retriever, ranker = checked["models"]["retriever"], checked["models"]["ranker"]
    service = build_service(
        args,
        lambda store: LocalBackend(
            retriever.models, ranker.models, retriever.index, store, args.models_from
        ),
        f"uvicorn-{os.getpid()}",
    )
    attach(service, ApiKeys.from_environment(), args.rate_limit)
    api = make_api()
    gc.collect()
    gc.freeze()  # models, vocabularies and the app live as long as the worker: never scan them
    return api


def run_uvicorn(config: Path, workers: int = 1) -> None:
    """Serve until Ctrl-C with `workers` processes on the config's host and port."""
    import uvicorn

    checked = read_serve_config(config)
    http = checked["document"].get("http_options") or {}
    ApiKeys.from_environment()  # fail here, with the message, not in every worker
    os.environ[CONFIG_ENV] = str(Path(config).resolve())
    os.environ[WORKERS_ENV] = str(workers)
    os.environ[PARENT_ENV] = str(os.getpid())
    # one /metrics for all workers: their values in one folder (metrics.py)
    shared = metrics.shared_across_processes() if workers > 1 else contextlib.nullcontext()
    with shared:
        uvicorn.run(
            "recstack.serving.local_server:build_local_app",
            host=http.get("host", "127.0.0.1"),
            port=int(http.get("port", 8000)),
            workers=workers,
            **uvicorn_options(),
        )


def uvicorn_options() -> dict:
    """How each worker's HTTP server runs: explicit timeouts for headers (408), keep-alive
    and (in http_limits.py) bodies; no access log (request lines carry ids)."""
    return {
        "factory": True,
        "http": HeaderTimeoutProtocol,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "log_level": "warning",
        "access_log": False,
    }
