"""Serve config YAMLs and API keys for tests that run the real Ray Serve app."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from recstack.serving.experiments import Experiment, assign

APP_KEY = "app-key-for-tests-0123456789"
ADMIN_KEY = "admin-key-for-tests-0123456789"
MODELS_KEY = "models-key-for-tests-0123456789"
PRIVACY_KEY = "privacy-key-for-tests-0123456789"
APP = {"Authorization": f"Bearer {APP_KEY}"}  # request headers with each scope's key
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MODELS = {"Authorization": f"Bearer {MODELS_KEY}"}
PRIVACY = {"Authorization": f"Bearer {PRIVACY_KEY}"}


EXPERIMENT_CONFIG = {
    "name": "test",
    "salt": "s1",
    "arms": [
        {"name": "model", "kind": "model", "model": "main", "weight": 0.5},
        {"name": "popularity", "kind": "popularity", "weight": 0.5},
    ],
}
EXPERIMENT = Experiment.model_validate(EXPERIMENT_CONFIG)


def user_in(arm: str, start: int = 1, prefix: str = "") -> str:
    """A user id (prefix + a number >= start) that the test experiment assigns to `arm`.

    ML-100K users are "1".."943"; larger numbers or a prefix give users without history.
    """
    return next(
        f"{prefix}{u}"
        for u in range(start, start + 100)
        if assign(EXPERIMENT, f"{prefix}{u}").name == arm
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def started_redis(workdir: Path, **options):
    """A running redis-server of a test's own (benchmarks/redis_server.py; the test is
    skipped without the binary)."""
    from redis_server import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    server = RedisServer(workdir, free_port(), **options)
    server.start()
    return server


def set_test_keys() -> None:
    """Keys through the environment, as in production (Ray workers inherit it)."""
    os.environ["RECSTACK_APP_KEYS"] = APP_KEY
    os.environ["RECSTACK_ADMIN_KEYS"] = ADMIN_KEY
    os.environ["RECSTACK_MODELS_KEYS"] = MODELS_KEY
    os.environ["RECSTACK_PRIVACY_KEYS"] = PRIVACY_KEY


def write_serve_config(
    path: Path,
    artifacts: dict[str, Path],
    state: Path,
    port: int,
    store: dict | None = None,
    ranker: Path | None = None,
    replicas: int = 1,
    weights: tuple[float, float] = (0.5, 0.5),
    colocated: bool = False,
    extra_args: dict | None = None,
) -> Path:
    config = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "recstack",
                "route_prefix": "/",
                "import_path": "recstack.serving.app:build_app",
                "args": {
                    "store": store or {"kind": "embedded", "path": str(state / "state.sqlite")},
                    "event_log": str(state / "events"),
                    "seed_histories_from": str(artifacts["dataset"]),
                    "experiment": {
                        **EXPERIMENT_CONFIG,
                        "arms": [
                            {**arm, "weight": weight}
                            for arm, weight in zip(EXPERIMENT_CONFIG["arms"], weights, strict=True)
                        ],
                    },
                },
                "deployments": [
                    {"name": "Ingress", "num_replicas": replicas},
                    {
                        "name": "Retriever",
                        "user_config": {"models": {"main": str(artifacts["retriever"])}},
                    },
                    {
                        "name": "Ranker",
                        "num_replicas": replicas,
                        "user_config": {"models": {"main": str(ranker or artifacts["ranker"])}},
                    },
                ],
            }
        ],
    }
    app = config["applications"][0]
    app["args"]["pipeline"] = "colocated" if colocated else "split"
    app["args"] |= extra_args or {}
    if colocated:  # models inside each Ingress replica, from its user_config
        retriever, ranker = (d["user_config"] for d in app["deployments"][1:])
        app["deployments"] = [
            {
                "name": "Ingress",
                "num_replicas": replicas,
                "user_config": {"retriever": retriever, "ranker": ranker},
            }
        ]
    path.write_text(yaml.safe_dump(config))
    return path


def ray_temp_dir() -> Path:
    """A short temp dir for Ray: its socket paths under it must fit in 107 bytes (AF_UNIX)."""
    return Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))


def start_serve(
    root: Path,
    artifacts: dict[str, Path],
    *options: str,
    extra_args: dict | None = None,
    cwd: Path | None = None,
    ready_s: float = 90.0,
) -> tuple[subprocess.Popen, str]:
    """`recstack serve <options>` in a process of its own on the test config (`root/serve.yaml`
    with `extra_args`, state under `root/state`); -> (the process, its URL) once it is ready."""
    from recstack.serving.serve_cmd import wait_ready

    set_test_keys()
    port = free_port()
    config = write_serve_config(
        root / "serve.yaml", artifacts, root / "state", port, extra_args=extra_args
    )
    command = [sys.executable, "-m", "recstack.cli", "serve", "--config", str(config), *options]
    server = subprocess.Popen(command, cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout_s=ready_s)
    except BaseException:
        server.kill()
        server.wait(timeout=30)
        raise
    return server, base


@contextlib.contextmanager
def uvicorn_service(root: Path, artifacts: dict[str, Path], workers: int) -> Iterator[str]:
    """`recstack serve --engine uvicorn` on the test config, state under `root`; yields its URL."""
    server, base = start_serve(root, artifacts, "--engine", "uvicorn", "--workers", str(workers))
    try:
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def scraped(url: str, name: str, **labels: str) -> float:
    """The sum of metric `name`'s samples with `labels`, from one scrape of `url`/metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", headers=MODELS, timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def served_by(url: str) -> int:
    """How many processes report a served-list coverage in one scrape (one per replica)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", headers=MODELS, timeout=10).text
    return len(
        {
            sample.labels["pid"]
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "recstack_served_coverage"
        }
    )
