"""A real Prometheus for tests, and the files of deploy/ it is tested with.

`started_prometheus` runs the Debian `prometheus` binary (tests/run.sh installs it) on a free
loopback port with a generated config; tests are skipped where it is missing.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from eventually import eventually
from service_config import free_port

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
EXAMPLE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "recstack.json"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return path


class Prometheus:
    """A Prometheus server of a test's own: TSDB and config under `workdir`, 127.0.0.1 only."""

    def __init__(self, workdir: Path, config: dict) -> None:
        self.workdir, self.port = workdir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.process: subprocess.Popen | None = None

    def start(self, ready_s: float = 30.0) -> None:
        command = [
            binary("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.process.poll() is None, f"prometheus exited: {self.log.read_text()}"
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200

        eventually(ready, timeout_s=ready_s, interval_s=0.2, message="prometheus not ready",
                   ignoring=(requests.ConnectionError,))  # fmt: skip

    def api(self, path: str, **params) -> requests.Response:
        return requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def started_prometheus(workdir: Path, config: dict) -> Prometheus:
    """A running Prometheus with `config` (skipped without the binary); call .stop()."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = Prometheus(workdir, config)
    server.start()
    return server


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' nested panels included."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            if inner["type"] != "row":
                found += [(inner["title"], t["expr"]) for t in inner.get("targets", [])]
    return found


# What Grafana puts in for its variables, concrete enough for Prometheus' HTTP API.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}


def concrete(expr: str, job: str) -> str:
    """`expr` as Grafana sends it with the dashboard's `job` variable set to `job`."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr.replace("$job", job)
