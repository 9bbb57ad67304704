"""Ops tests (the alert rules and dashboard of deploy/ against promtool and a real
Prometheus): the serving tests' config helpers are on the path, to start the service that
Prometheus scrapes (tests/ops/prometheus_server.py runs Prometheus)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
