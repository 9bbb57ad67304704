"""A real Prometheus scrapes the 2-worker uvicorn service with the operator key, loads
deploy/prometheus/alerts.yml, fires an alert live, and answers every PromQL query of the
Grafana dashboard with data.

One test walks the whole story in order (the no-traffic alert must fire before the traffic);
as separate tests, pytest-xdist could start the service and Prometheus once per worker.
"""

import json
import math
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from eventually import eventually
from prometheus_server import ALERTS, DASHBOARD, concrete, dashboard_queries, started_prometheus
from service_config import APP, MODELS_KEY, uvicorn_service

pytestmark = pytest.mark.integration
if shutil.which("prometheus") is None:  # before the service and its artifacts are built
    pytest.skip("prometheus is not installed (apt-get install prometheus)", allow_module_level=True)

JOB = "recstack"
TS = 1_900_000_000


def live_rules(path: Path) -> Path:
    """alerts.yml evaluated every second with no `for:` wait: the real expressions, firing
    within seconds instead of minutes."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for group in groups:
        group["name"] += "-live"
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = "0s"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def prometheus_config(root: Path, target: str) -> dict:
    key = root / "models.key"
    key.write_text(MODELS_KEY)
    key.chmod(0o600)
    static = [{"targets": [target]}]
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS), str(live_rules(root / "alerts_live.yml"))],
        "scrape_configs": [
            {"job_name": JOB, "authorization": {"credentials_file": str(key)},
             "static_configs": static},
            {"job_name": "without-key", "static_configs": static},  # must be refused
        ],
    }  # fmt: skip


def post(url: str, path: str, body: dict) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, headers=APP, timeout=30)


def traffic(url: str, round_: int) -> None:
    """Known users (personalised lists, both arms), cold users (cold_start fallbacks), an
    anonymous session with an unknown id, similar items, impressions and clicks that carry
    the served list's model version and request id, an opted-out user's dropped event."""
    served = []
    for user in [str(u) for u in range(1, 21)] + [f"ops-cold-{round_}-{i}" for i in range(6)]:
        response = post(url, "/v1/recommend", {"user_id": user, "k": 5})
        assert response.status_code == 200, response.text
        served.append((user, response.json()))
    anonymous = {"user_id": "ops-anon", "recent_items": ["50", "no-such-item"], "k": 5}
    assert post(url, "/v1/recommend", anonymous).json()["unknown_items"] == 1
    for item in ("50", "181", "no-such-item"):
        requests.get(f"{url}/v1/similar/{item}", params={"k": 5}, headers=APP, timeout=30)
    events = []
    for n, (user, body) in enumerate(served):
        tags = {"model_version": body["model_version"], "request_id": body["request_id"]}
        items = [i["item_id"] for i in body["items"]]
        events += [{"user_id": user, "item_id": i, "type": "impression", "ts": TS, **tags}
                   for i in items]  # fmt: skip
        if n % 2 == 0:
            events.append({"user_id": user, "item_id": items[0], "type": "click", "ts": TS, **tags})
    assert post(url, "/v1/events", {"events": events}).status_code == 202
    private = f"ops-private-{round_}"
    consent = requests.put(
        f"{url}/v1/users/{private}/consent", json={"tracking": False}, headers=APP, timeout=30
    )
    assert consent.status_code == 200, consent.text
    view = {"user_id": private, "item_id": "50", "type": "view", "ts": TS}
    assert post(url, "/v1/events", {"events": [view]}).json()["dropped_no_consent"] == 1


def store_outage(url: str, store: Path, hold_s: float = 2.5) -> list[dict]:
    """Another process holds the embedded store's write lock for `hold_s`: the history writes
    of events posted meanwhile fail (store errors of kind "error"); the events are logged."""
    lock = sqlite3.connect(store, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    answers: list[dict] = []

    def send(n: int) -> None:
        event = {"user_id": f"ops-outage-{n}", "item_id": "50", "type": "view", "ts": TS}
        answers.append(post(url, "/v1/events", {"events": [event]}).json())

    senders = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    try:
        for sender in senders:
            sender.start()
        time.sleep(hold_s)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    for sender in senders:
        sender.join(timeout=30)
    return answers


def rule_states(prometheus) -> dict[tuple[str, str], dict]:
    """(rule file name, alert name) -> the rule as /api/v1/rules reports it."""
    groups = prometheus.api("rules").json()["data"]["groups"]
    return {(Path(g["file"]).name, r["name"]): r for g in groups for r in g["rules"]}


def query(prometheus, expr: str) -> list[dict]:
    """The instant query's result; fails at once on a query Prometheus refuses (400)."""
    response = prometheus.api("query", query=expr)
    assert response.status_code == 200, f"{expr}\n{response.text}"
    return response.json()["data"]["result"]


def test_prometheus_scrapes_the_service_evaluates_the_alerts_and_feeds_the_dashboard(
    tmp_path_factory, ml100k_artifacts
):
    root = tmp_path_factory.mktemp("ops")
    with uvicorn_service(root, ml100k_artifacts, workers=2) as url:
        prometheus = started_prometheus(
            root / "prometheus", prometheus_config(root, url.removeprefix("http://"))
        )
        try:
            # 1. Scraped with the operator key; refused without it.
            def targets():
                active = prometheus.api("targets").json()["data"]["activeTargets"]
                by_job = {t["labels"]["job"]: t for t in active}
                health = {job: by_job.get(job, {}).get("health") for job in (JOB, "without-key")}
                assert health == {JOB: "up", "without-key": "down"}, active
                return by_job

            refused = eventually(targets, timeout_s=20, message="targets")["without-key"]
            assert "401" in refused["lastError"]

            # 2. Every rule of alerts.yml loaded and evaluates without error; before any
            # recommendation the (live) no-traffic alert fires.
            names = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"]
                     for r in g["rules"]}  # fmt: skip

            def evaluated():
                rules = rule_states(prometheus)
                assert {n for f, n in rules if f == ALERTS.name} == names
                assert all(r["health"] == "ok" for r in rules.values()), rules
                return rules

            eventually(evaluated, timeout_s=20, message="rules not evaluated")
            no_traffic = ("alerts_live.yml", "RecstackNoTraffic")
            eventually(
                lambda: rule_states(prometheus)[no_traffic]["state"] == "firing",
                timeout_s=20,
                message="the no-traffic alert did not fire before any traffic",
            )

            # 3. Traffic in two rounds with a scrape between them (a rate needs two samples of
            # a series), the second after a store outage.
            traffic(url, 0)
            eventually(
                lambda: query(prometheus, "recstack_recommendations_total"),
                timeout_s=20,
                message="the first round was never scraped",
            )
            outage = store_outage(url, root / "state" / "state.sqlite")
            assert any(not a["history_updated"] for a in outage), outage
            traffic(url, 1)

            # 4. The alert resolves; every panel's query parses and returns data.
            eventually(
                lambda: rule_states(prometheus)[no_traffic]["state"] == "inactive",
                timeout_s=20,
                message="the no-traffic alert did not resolve with traffic",
            )
            queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
            for _, expr in queries:  # each parses (a 400 fails here, not after waiting)
                query(prometheus, concrete(expr, JOB))

            def all_have_data() -> bool:
                missing = [
                    f"{title}: {expr}"
                    for title, expr in queries
                    if not any(
                        math.isfinite(float(s["value"][1]))
                        for s in query(prometheus, concrete(expr, JOB))
                    )
                ]
                assert not missing, "no finite value from " + "; ".join(missing)
                return True

            eventually(all_have_data, timeout_s=30, interval_s=1, message="dashboard queries")
            evaluated()  # still all healthy after the traffic
        finally:
            prometheus.stop()
