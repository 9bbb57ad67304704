"""benchmarks/load_test.py for a few seconds against a real recstack service (uvicorn engine,
one worker, ML-100K models): the client's accounting must match what the server counted."""

import json
import sys
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from service_config import ADMIN, APP_KEY, uvicorn_service

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import load_test

pytestmark = pytest.mark.integration
ROUTES = {"/v1/recommend", "/v1/events", "/v1/similar/{item_id}"}


@pytest.fixture(scope="module")
def url(tmp_path_factory, ml100k_artifacts):
    with uvicorn_service(tmp_path_factory.mktemp("load"), ml100k_artifacts, workers=1) as base:
        yield base


def served(url: str) -> tuple[int, int]:
    """(requests, 2xx responses) the server counted on the load test's routes."""
    text = requests.get(f"{url}/metrics", headers=ADMIN, timeout=10).text
    total = ok = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "recstack_requests_total" and sample.labels["route"] in ROUTES:
                total += sample.value
                ok += sample.value if sample.labels["status"].startswith("2") else 0
    return int(total), int(ok)


def test_the_load_generator_accounts_for_every_request(url, ml100k_artifacts, tmp_path):
    out = tmp_path / "load.json"
    before = served(url)
    argv = ["--url", url, "--dataset", str(ml100k_artifacts["dataset"]), "--api-key", APP_KEY]
    argv += ["--rate", "40", "--duration", "3", "--warmup", "1", "--out", str(out)]
    assert load_test.main(argv) == 0
    after = served(url)

    result = json.loads(out.read_text())
    (step,) = result["steps"]
    overall, endpoints = step["overall"], step["endpoints"]
    assert overall["sent"] == 120 and step["warmup"]["sent"] == 40
    assert overall["sent"] == overall["ok"] + overall["errors"]
    assert sum(e["sent"] for e in endpoints.values()) == overall["sent"]
    # the server saw the preflight call, the warm-up and every measured request
    sent_total = 1 + step["warmup"]["sent"] + overall["sent"]
    ok_total = 1 + step["warmup"]["ok"] + overall["ok"]
    assert (after[0] - before[0], after[1] - before[1]) == (sent_total, ok_total)
    assert overall["errors"] == 0, overall  # a healthy service at 40 req/s
    for summary in [overall, *(e for e in endpoints.values() if e["ok"])]:
        latency = summary["latency_ms"]
        values = [latency[p] for p in ("p50", "p90", "p99", "p99.9", "max")]
        assert values == sorted(values) and values[0] > 0, latency
    assert set(endpoints["recommend"]["fallbacks"]) <= {"null", "cold_start"}
    assert step["cpu"]["server_cpu_s"] > 0 and step["cpu"]["server_processes"] >= 1
    assert all(Path(plot).stat().st_size > 10_000 for plot in result["plots"])
