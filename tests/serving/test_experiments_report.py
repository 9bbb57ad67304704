"""The A/B report: attribution by request_id, user-level metrics and intervals per arm, zero
traffic, SRM and guardrails in the report, the over-time series, and the rendered table."""

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from experiment_logs import T0, ev, experiment, exposition, table, users_log
from rich.console import Console

from recstack.errors import RecstackError
from recstack.serving.experiment_report import NO_IMPRESSIONS, experiment_report, user_arrays
from recstack.serving.experiments_cmd import render_report

Z95 = 1.959963984540054  # standard normal 97.5 % quantile


def attribution_log() -> list[dict]:
    return [
        # control a0: u1 is shown items 1-3 in request r1
        *(ev("u1", "impression", "a0", "r1", item) for item in "123"),
        ev("u1", "click", "a0", "r1", "1"),
        ev("u1", "click", "a0", "r1", "1"),  # the same click again: counts once
        ev("u1", "click", "a0", "r1", "9"),  # not in the list: unattributed
        ev("u1", "purchase", "a0", "r1", "2", value=10.0),
        # u2: items 1-2 in r2, the impression of item 1 posted twice (a retry): counted once
        *(ev("u2", "impression", "a0", "r2", item) for item in "112"),
        ev("u2", "click", "a0", None, "1"),  # no request_id: unattributed
        # a1: u3 is shown items 1-4 in r3; two clicks, a purchase with and one without value
        *(ev("u3", "impression", "a1", "r3", item) for item in "1234"),
        ev("u3", "click", "a1", "r3", "1"),
        ev("u3", "click", "a1", "r3", "2"),
        ev("u3", "purchase", "a1", "r3", "3", value=5.0),
        ev("u3", "purchase", "a1", "r3", "4"),
        ev("u4", "click", "a1", "r3", "1"),  # another user's list: unattributed
        ev("u4", "purchase", "a1", None, "1", value=99.0),  # unattributed
        ev("u9", "impression", None, "r9", "1"),  # outside the experiment
        ev("u9", "click", None, "r9", "1"),
    ]


def test_outcomes_count_only_when_they_match_a_served_list():
    report = experiment_report(table(attribution_log()), experiment(1, 1, 1))
    a0, a1 = report["arms"]["a0"], report["arms"]["a1"]
    assert (a0["users"], a0["impressions"], a0["clicks"], a0["purchases"]) == (2, 5, 1, 1)
    assert (a0["unattributed_clicks"], a0["unattributed_purchases"]) == (2, 0)
    assert a0["ctr"] == pytest.approx(1 / 5)
    assert a0["conversion"] == pytest.approx(1 / 2) and a0["value_per_user"] == 5.0
    assert (a1["users"], a1["impressions"], a1["clicks"], a1["purchases"]) == (1, 4, 2, 2)
    assert (a1["unattributed_clicks"], a1["unattributed_purchases"]) == (1, 1)
    assert a1["ctr"] == 0.5 and a1["conversion"] == 1.0 and a1["value_per_user"] == 5.0
    assert a1["vs_control"]["diff"] == pytest.approx(0.5 - 0.2)
    assert report["attribution"] == {
        "clicks": 3,
        "purchases": 3,
        "unattributed_clicks": 3,
        "unattributed_purchases": 1,
        "impressions_without_request_id": 0,
    }
    # events outside any arm are counted apart and never attributed to an arm
    assert report["unassigned"] == {"impressions": 1, "clicks": 1, "users": 1, "events": 2}
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere


def test_the_ctr_interval_is_the_delta_method_over_users():
    """Per-user (impressions, clicks): the interval from the covariance form of the delta
    method, written out here independently of the report's residual form."""
    control, treatment = [(2, 1), (3, 0), (5, 2), (4, 1)], [(4, 2), (2, 2), (4, 1), (6, 2)]

    def by_hand(users):
        n, c = np.array(users, dtype=float).T
        ratio, k = c.sum() / n.sum(), len(n)
        cov = np.cov(np.vstack([c, n]))  # ddof 1
        variance = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (k * n.mean() ** 2)
        return ratio, math.sqrt(variance)

    arms = {
        name: {"impressions": [u[0] for u in us], "clicks": [u[1] for u in us]}
        for name, us in (("a0", control), ("a1", treatment))
    }
    report = experiment_report(users_log(arms), experiment(1, 1))
    (r0, se0), (r1, se1) = by_hand(control), by_hand(treatment)
    a0, a1 = report["arms"]["a0"], report["arms"]["a1"]
    assert a0["ctr"] == pytest.approx(r0) and a1["ctr"] == pytest.approx(r1)
    assert a0["ctr_ci"] == pytest.approx([r0 - Z95 * se0, r0 + Z95 * se0])
    se = math.hypot(se0, se1)
    versus = a1["vs_control"]
    assert versus["diff"] == pytest.approx(r1 - r0)
    assert versus["ci"] == pytest.approx([r1 - r0 - Z95 * se, r1 - r0 + Z95 * se])
    assert versus["p_value"] == pytest.approx(math.erfc(abs(r1 - r0) / se / math.sqrt(2)))
    assert versus["relative"] == pytest.approx((r1 - r0) / r0)
    # the impression-level (binomial) standard error ignores that a user's clicks go together
    naive = math.sqrt(r0 * (1 - r0) / 14)
    assert se0 != pytest.approx(naive, rel=0.01)


def test_conversion_and_value_per_user_intervals():
    arms = {
        "a0": {"impressions": [3] * 4, "purchases": [1, 0, 0, 0], "value": [8.0, 0, 0, 0]},
        "a1": {"impressions": [3] * 4, "purchases": [1, 2, 0, 1], "value": [2.0, 4.0, 0, 6.0]},
    }
    report = experiment_report(users_log(arms), experiment(1, 1))
    a0, a1 = report["arms"]["a0"], report["arms"]["a1"]
    assert (a0["conversion"], a1["conversion"]) == (0.25, 0.75)
    assert a1["conversion_ci"] == pytest.approx([0.3006, 0.9544], abs=1e-4)  # Wilson, 3 of 4
    values = np.array([2.0, 4.0, 0.0, 6.0])
    half = Z95 * values.std(ddof=1) / 2
    assert a1["value_per_user"] == 3.0
    assert a1["value_per_user_ci"] == pytest.approx([max(0.0, 3.0 - half), 3.0 + half])
    se = math.hypot(values.std(ddof=1) / 2, np.array([8.0, 0, 0, 0]).std(ddof=1) / 2)
    assert a1["value_per_user_vs_control"]["diff"] == 1.0
    assert a1["value_per_user_vs_control"]["ci"] == pytest.approx([1 - Z95 * se, 1 + Z95 * se])
    b0, b1 = np.array([1, 0, 0, 0]), np.array([1, 1, 0, 1])
    se = math.hypot(b0.std(ddof=1) / 2, b1.std(ddof=1) / 2)
    assert a1["conversion_vs_control"]["ci"] == pytest.approx([0.5 - Z95 * se, 0.5 + Z95 * se])


def test_an_arm_without_traffic_says_so():
    log = users_log({"a0": {"impressions": [2, 3], "clicks": [1, 1]}})
    report = experiment_report(log, experiment(1, 1, 1))
    a2 = report["arms"]["a2"]
    assert a2["note"] == NO_IMPRESSIONS and a2["users"] == a2["impressions"] == 0
    for metric in ("ctr", "conversion", "value_per_user"):
        assert a2[metric] is None and a2[f"{metric}_ci"] is None
    assert a2["vs_control"] is None and a2["conversion_vs_control"] is None
    assert report["arms"]["a0"]["note"] is None
    text = rendered(report)
    assert f"arm a2: {NO_IMPRESSIONS}" in text

    no_control = experiment_report(log, experiment(1, 1), control="a1")
    assert no_control["arms"]["a0"]["vs_control"] is None
    assert "the control arm 'a1' has no impressions" in no_control["notes"][0]


def test_an_empty_log_says_so():
    report = experiment_report(table([]), experiment(1, 1), over_time=True)
    assert report["notes"][0] == "the event log holds no events"
    assert all(arm["note"] == NO_IMPRESSIONS for arm in report["arms"].values())
    assert (
        report["srm"]["p_value"] is None
        and report["srm"]["note"] == "no users with impressions yet"
    )
    assert report["over_time"]["points"] == []
    assert "the event log holds no events" in rendered(report)
    json.dumps(report, allow_nan=False)


def test_impressions_without_request_id_count_but_take_no_clicks():
    rows = [ev("u1", "impression", "a0", None, "1"), ev("u1", "click", "a0", None, "1")]
    report = experiment_report(table(rows), experiment(1, 1))
    a0 = report["arms"]["a0"]
    assert (a0["impressions"], a0["clicks"], a0["unattributed_clicks"]) == (1, 0, 1)
    assert a0["impressions_without_request_id"] == 1
    assert "1 impressions carry no request_id" in report["notes"][-1]


def test_arms_from_the_log_control_choice_and_bad_input():
    rows = [
        ev("u1", "impression", "b", "r1"),
        ev("u2", "impression", "a", "r2"),
        ev("u2", "click", "a", "r2"),
    ]
    report = experiment_report(table(rows))
    assert list(report["arms"]) == ["a", "b"] and report["control"] == "a"
    assert report["arms"]["b"]["declared"] is False and report["arms"]["b"]["kind"] is None
    assert report["srm"] is None  # no declared weights
    assert experiment_report(table(rows), control="b")["arms"]["a"]["vs_control"]["diff"] == 1.0
    listed = experiment_report(table([ev("u1", "impression", "old", "r")]), experiment(1, 1))
    assert list(listed["arms"]) == ["a0", "a1", "old"]
    with pytest.raises(RecstackError, match=r"lacks columns \['arm'\]"):
        experiment_report(table(rows).drop_columns(["arm"]))
    with pytest.raises(RecstackError, match="control arm 'zz' is neither declared nor in the log"):
        experiment_report(table(rows), control="zz")
    # an all-null arm column (type null), as a log written before experiments existed
    no_arms = table([ev("u1", "impression", None, "r1")]).set_column(3, "arm", pa.nulls(1))
    assert (
        experiment_report(no_arms)["arms"] == {} and experiment_report(no_arms)["control"] is None
    )
    # a log from before request ids and values: only the three required columns
    bare = table(rows).select(["user_id", "type", "arm"])
    assert experiment_report(bare)["arms"]["a"]["impressions"] == 1


def test_sample_ratio_mismatch_is_flagged_in_the_report():
    skewed = users_log({"a0": {"impressions": [1] * 300}, "a1": {"impressions": [1] * 200}})
    srm = experiment_report(skewed, experiment(1, 1))
    assert srm["srm"]["flagged"] and srm["srm"]["p_value"] < 1e-3
    assert srm["srm"]["users"] == {"a0": 300, "a1": 200}
    assert srm["notes"][0].startswith("sample-ratio mismatch")
    assert "MISMATCH" in rendered(srm)
    # the same users against 3:2 weights fit
    fits = experiment_report(skewed, experiment(3, 2))
    assert not fits["srm"]["flagged"] and fits["srm"]["p_value"] == pytest.approx(1.0)


def test_guardrails_per_arm_from_the_exposition():
    log = users_log({"a0": {"impressions": [2]}, "a1": {"impressions": [2]}})
    report = experiment_report(log, experiment(1, 1), guardrails=exposition())
    assert report["guardrails"]["available"] is True
    a0 = report["arms"]["a0"]["guardrails"]
    # 1000 observations: 980 in (0.003, 0.005], 20 in (0.015, 0.025]; rank 990 lies in the
    # 0.025 bucket: 0.015 + 0.01 * (990 - 980) / (1000 - 980)
    assert a0["p99_latency_s"] == pytest.approx(0.02)
    assert a0["fallback_share"] == pytest.approx(0.1) and a0["recommendations"] == 1000
    a1 = report["arms"]["a1"]["guardrails"]
    assert a1 == {"p99_latency_s": None, "fallback_share": 0.0, "recommendations": 5}
    text = rendered(report)
    assert "20.0 ms" in text and "10.0 %" in text
    missing = experiment_report(log, experiment(1, 1))
    assert (
        missing["guardrails"]["available"] is False and missing["arms"]["a0"]["guardrails"] is None
    )
    garbage = experiment_report(log, experiment(1, 1), guardrails="recstack{{{ 1 2 3")
    assert garbage["guardrails"]["available"] is False
    assert garbage["guardrails"]["note"].startswith("not Prometheus text")


def test_over_time_is_cumulative_by_hour_or_day():
    hours = np.repeat([0, 1, 2], 40) * 3_600_000 + 5_000
    rng = np.random.default_rng(0)
    arms = {
        name: {"impressions": rng.integers(1, 6, 120), "clicks": rng.integers(0, 2, 120)}
        for name in ("a0", "a1")
    }
    log = users_log(arms, at=T0 + hours)
    report = experiment_report(log, experiment(1, 1), over_time=True)
    series = report["over_time"]
    assert series["bucket"] == "hour"
    assert [p["until_ms"] - T0 for p in series["points"]] == [3_600_000, 7_200_000, 10_800_000]
    assert [p["arms"]["a0"]["users"] for p in series["points"]] == [40, 80, 120]
    last = series["points"][-1]["arms"]["a1"]
    for key in ("ctr", "ctr_ci", "conversion_ci", "value_per_user"):
        assert last[key] == report["arms"]["a1"][key]
    first = user_arrays(log.filter(np.asarray(log["received_at"]) < T0 + 3_600_000))["a1"]
    assert series["points"][0]["arms"]["a1"]["ctr"] == pytest.approx(
        first["clicks"].sum() / first["impressions"].sum()
    )
    days = users_log(arms, at=T0 + np.repeat([0, 4, 200], 40) * 86_400_000)
    daily = experiment_report(days, experiment(1, 1), over_time=True)["over_time"]
    assert daily["bucket"] == "day" and len(daily["points"]) <= 60
    assert daily["points"][-1]["arms"]["a0"]["users"] == 120


def rendered(report: dict) -> str:
    console = Console(record=True, width=220)
    console.print(render_report(report))
    return console.export_text()


def test_the_report_renders_as_tables():
    report = experiment_report(table(attribution_log()), experiment(1, 1, 1))
    text = rendered(report)
    for expected in ("CTR in %", "20.00", "50.00", "+30.00", "control", "no arm", "2 / 0"):
        assert expected in text, expected
    assert "value per user" in text and "SRM (users vs weights" in text
    assert "guardrails: unavailable: no metrics given" in text
