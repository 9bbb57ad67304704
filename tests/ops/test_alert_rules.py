"""deploy/: the alert rules pass `promtool check rules` and their unit tests, every alert is
tested firing and silent, the example scrape config is valid, and the Grafana dashboard is
well formed and covers every metric of serving/metrics.py (no server needed)."""

import json
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_server import (
    ALERTS,
    ALERTS_TEST,
    DASHBOARD,
    EXAMPLE_CONFIG,
    binary,
    concrete,
    dashboard_queries,
)

from recstack.serving import metrics

SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
METRIC_NAME = re.compile(r"\brecstack_[a-z0-9_]+")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def exposed_series() -> dict[str, str]:
    """Series name -> metric family, for every metric serving/metrics.py defines."""
    names = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= {family.name + s: family.name for s in SUFFIXES[family.type]}
    return names


def test_promtool_checks_the_alert_rules():
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_the_alert_unit_tests_pass():
    tested = promtool("test", "rules", str(ALERTS_TEST))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_silent():
    cases = [
        case
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case.get("exp_alerts") for case in mine), f"{rule['alert']} never fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{rule['alert']} never silent"


def test_every_alert_says_how_bad_what_it_means_and_what_to_do():
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        assert rule.get("for"), f"{rule['alert']}: no `for:`, it would fire on one evaluation"
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and len(annotations["description"]) > 100, rule["alert"]
        unknown = set(METRIC_NAME.findall(rule["expr"])) - exposed_series().keys()
        assert not unknown, f"{rule['alert']} reads metrics recstack does not expose: {unknown}"


def test_the_example_scrape_config_is_valid(tmp_path):
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    key = tmp_path / "models.key"
    key.write_text("a-models-key\n")
    for job in config["scrape_configs"]:
        job["authorization"]["credentials_file"] = str(key)  # the example's path is /etc/…
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    checked = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert config["scrape_configs"][0]["job_name"] == "recstack"  # RecstackTargetDown's job


def test_the_dashboard_is_importable_and_covers_every_metric():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39  # Grafana 11 and later
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    series = exposed_series()
    used = set()
    for title, expr in dashboard_queries(dashboard):
        assert "$" not in concrete(expr, "recstack"), f"{title}: a variable the tests don't set"
        names = set(METRIC_NAME.findall(expr))
        assert names and names <= series.keys(), f"{title}: {names - series.keys()}"
        used |= {series[name] for name in names}
    assert used == set(series.values()), f"no panel shows {set(series.values()) - used}"


@pytest.mark.parametrize("variable", ["$__rate_interval", "$job"])
def test_the_queries_follow_the_dashboard_variables(variable):
    """Every rate takes Grafana's interval, every selector the job variable: a panel that
    hard-codes either one ignores the dashboard's controls."""
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    for title, expr in queries:
        if variable == "$job":
            selectors = re.findall(r"recstack_[a-z0-9_]+(\{[^}]*\})?", expr)
            assert all('job=~"$job"' in s for s in selectors), f"{title}: {expr}"
        else:
            windows = re.findall(r"\[([^\]]+)\]", expr)
            assert all(w in ("$__rate_interval", "$__range") for w in windows), f"{title}"
