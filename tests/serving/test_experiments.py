"""A/B experiments: config validation, hash assignment, and the CTR report per arm."""

import hashlib
import json
import math
import re
import subprocess
import sys
from collections import Counter

import pyarrow as pa
import pytest
from pydantic import ValidationError
from rich.console import Console

from recstack.errors import RecstackError
from recstack.serving.experiments import (
    Arm,
    Experiment,
    assign,
    experiment_report,
    load_experiment,
)
from recstack.serving.experiments_cmd import render_report

Z95 = 1.959963984540054  # standard normal 97.5 % quantile
USERS = [str(u) for u in range(1, 20_001)]


def experiment(*weights: float, salt: str = "exp-1", popularity: bool = True) -> Experiment:
    """Arms a0 (popularity unless told otherwise), a1, … with the given weights."""
    arms = [
        Arm(name=f"a{i}", kind="model", model=f"m{i}", weight=w)
        if i or not popularity
        else Arm(name="a0", kind="popularity", weight=w)
        for i, w in enumerate(weights)
    ]
    return Experiment(name="exp", salt=salt, arms=arms)


# --- assignment -----------------------------------------------------------------------------


def reference_arm(exp: Experiment, user_id: str) -> str:
    """The documented rule, written out independently: u in [0, 1), cumulative weights."""
    digest = hashlib.sha256(f"{exp.salt}:{user_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for arm in exp.arms:
        cumulative += arm.weight
        if u < cumulative:
            return arm.name
    return exp.arms[-1].name


def test_weights_are_normalised():
    exp = experiment(1, 4)
    assert [arm.weight for arm in exp.arms] == [0.2, 0.8]
    assert Experiment.model_validate(exp.model_dump()) == exp


def test_assignment_follows_the_documented_rule():
    exp = experiment(1, 2, 3)
    assert [assign(exp, u).name for u in USERS[:2000]] == [
        reference_arm(exp, u) for u in USERS[:2000]
    ]


def test_assignment_is_deterministic_across_calls_and_processes():
    exp = experiment(1, 1, 2)
    here = [assign(exp, u).name for u in USERS[:200]]
    assert here == [assign(exp, u).name for u in USERS[:200]]
    code = (
        "import json, sys\n"
        "from recstack.serving.experiments import Experiment, assign\n"
        "exp = Experiment.model_validate_json(sys.argv[1])\n"
        "print(json.dumps([assign(exp, str(u)).name for u in range(1, 201)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, exp.model_dump_json()],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},  # a different str hash seed must not matter
    ).stdout
    assert json.loads(out) == here


@pytest.mark.parametrize("weights", [(0.5, 0.5), (1, 4)], ids=["50-50", "20-80"])
def test_assignment_is_balanced(weights):
    exp = experiment(*weights)
    counts = Counter(assign(exp, u).name for u in USERS)
    n = len(USERS)
    for arm in exp.arms:
        sigma = math.sqrt(n * arm.weight * (1 - arm.weight))
        assert abs(counts[arm.name] - n * arm.weight) < 4 * sigma, (arm.name, counts)


def test_changing_the_salt_reshuffles():
    first, second = experiment(1, 1, salt="s1"), experiment(1, 1, salt="s2")
    same = sum(assign(first, u).name == assign(second, u).name for u in USERS) / len(USERS)
    assert abs(same - 0.5) < 4 * math.sqrt(0.25 / len(USERS))  # independent: agree half the time


def test_one_arm_takes_everyone():
    exp = experiment(3)
    assert {assign(exp, u).name for u in USERS[:500]} == {"a0"}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"name": "e", "salt": "s", "arms": []}, "declares no arms"),
        (
            {
                "name": "e",
                "salt": "s",
                "arms": [
                    {"name": "x", "kind": "popularity", "weight": 1},
                    {"name": "x", "kind": "model", "model": "m", "weight": 1},
                ],
            },
            "arm names must be unique: ['x']",
        ),
        (
            {"name": "e", "salt": "s", "arms": [{"name": "x", "kind": "model", "weight": 1}]},
            "has kind 'model' but no `model`",
        ),
        (
            {
                "name": "e",
                "salt": "s",
                "arms": [{"name": "x", "kind": "popularity", "model": "m", "weight": 1}],
            },
            "must not name a model",
        ),
        (
            {"name": "e", "salt": "s", "arms": [{"name": "x", "kind": "popularity", "weight": 0}]},
            "greater than 0",
        ),
        (
            {"name": "e", "salt": "s", "arms": [{"name": "x", "kind": "popularity", "weight": -1}]},
            "greater than 0",
        ),
        (
            {"name": "e", "salt": "s", "arms": [{"name": "x", "kind": "bandit", "weight": 1}]},
            "'model' or 'popularity'",
        ),
        (
            {
                "name": "e",
                "salt": "s",
                "arms": [{"name": "x", "kind": "popularity", "weight": 1, "share": 2}],
            },
            "Extra inputs are not permitted",
        ),
        ({"name": "e", "arms": [{"name": "x", "kind": "popularity", "weight": 1}]}, "salt"),
    ],
    ids=["no-arms", "duplicate", "model-missing", "model-on-popularity", "zero-weight",
         "negative-weight", "unknown-kind", "unknown-field", "no-salt"],
)  # fmt: skip
def test_invalid_configs_are_refused(config, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        Experiment.model_validate(config)


def test_several_popularity_arms_are_allowed_and_the_first_is_control():
    exp = Experiment(
        name="e",
        salt="s",
        arms=[
            Arm(name="m", kind="model", model="sasrec", weight=1),
            Arm(name="pop1", kind="popularity", weight=1),
            Arm(name="pop2", kind="popularity", weight=1),
        ],
    )
    assert exp.control.name == "pop1"
    assert experiment(1, 1, popularity=False).control.name == "a0"


def test_check_models_names_unknown_model_sets():
    exp = experiment(1, 1, 1)
    exp.check_models({"m1", "m2", "other"})
    with pytest.raises(RecstackError, match=r"'a2' → 'm2'.*declared model sets: \['m1'\]"):
        exp.check_models({"m1"})


SERVE_CONFIG = """\
applications:
  - name: recstack
    import_path: recstack.serving.app:app
    args:
      experiment:
        name: homepage
        salt: "2024-q1"
        arms:
          - {name: control, kind: popularity, weight: 1}
          - {name: sasrec, kind: model, model: sasrec-v3, weight: 3}
"""


def test_load_experiment_from_a_serve_config(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(SERVE_CONFIG)
    exp = load_experiment(path)
    assert exp.name == "homepage" and [a.weight for a in exp.arms] == [0.25, 0.75]

    path.write_text(SERVE_CONFIG.replace("weight: 3", "weight: 0"))
    with pytest.raises(RecstackError, match=r"serve.yaml: invalid experiment: arms\.1\.weight"):
        load_experiment(path)
    path.write_text("applications:\n  - name: x\n    args: {}\n")
    with pytest.raises(
        RecstackError, match=r"no experiment at applications\[0\]\.args\.experiment"
    ):
        load_experiment(path)
    with pytest.raises(RecstackError, match="cannot read serve config"):
        load_experiment(tmp_path / "missing.yaml")


# --- report ---------------------------------------------------------------------------------


def events_table(rows: list[tuple[str, str, str | None]]) -> pa.Table:
    """Rows of (user_id, type, arm) with the event log's other columns filled in."""
    n = len(rows)
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": ["1"] * n,
            "type": [r[1] for r in rows],
            "arm": pa.array([r[2] for r in rows], pa.string()),
            "ts": list(range(n)),
            "request_id": [f"r{i}" for i in range(n)],
        }
    )


def small_log() -> pa.Table:
    """Control a0: 10 impressions, 2 clicks (users u1, u2); a1: 20 impressions, 8 clicks
    (users u3..u6); unassigned: 3 impressions, 1 click (u7); a2 has no events."""
    rows = [("u1" if i < 5 else "u2", "impression", "a0") for i in range(10)]
    rows += [("u1", "click", "a0"), ("u2", "click", "a0")]
    rows += [(f"u{3 + i % 4}", "impression", "a1") for i in range(20)]
    rows += [(f"u{3 + i % 4}", "click", "a1") for i in range(8)]
    rows += [("u3", "add_to_cart", "a1")]
    rows += [("u7", "impression", None)] * 3 + [("u7", "click", None)]
    return events_table(rows)


def wilson(k: int, n: int) -> list[float]:
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 / (1 + Z95**2 / n) * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2))
    return [centre - half, centre + half]


def test_report_counts_ctr_and_wilson_interval():
    report = experiment_report(small_log(), experiment(1, 1, 1))
    a0, a1, a2 = (report["arms"][name] for name in ("a0", "a1", "a2"))
    assert (a0["impressions"], a0["clicks"], a0["users"], a0["ctr"]) == (10, 2, 2, 0.2)
    assert (a1["impressions"], a1["clicks"], a1["users"], a1["ctr"]) == (20, 8, 4, 0.4)
    assert a0["ctr_ci"] == pytest.approx(wilson(2, 10), abs=1e-9)
    assert a0["ctr_ci"] == pytest.approx([0.0567, 0.5098], abs=1e-4)  # textbook 2 of 10
    assert a1["ctr_ci"] == pytest.approx(wilson(8, 20), abs=1e-9)
    assert a2 == {
        "kind": "model", "model": "m2", "weight": pytest.approx(1 / 3), "declared": True,
        "impressions": 0, "clicks": 0, "users": 0, "events": 0, "ctr": None, "ctr_ci": None,
        "vs_control": None,
    }  # fmt: skip
    assert report["unassigned"] == {"impressions": 3, "clicks": 1, "users": 1, "events": 4}
    assert report["control"] == "a0" and report["events"] == 45
    json.dumps(report)  # JSON-ready


def test_report_difference_vs_control_by_hand():
    versus = experiment_report(small_log(), experiment(1, 1, 1))["arms"]["a1"]["vs_control"]
    se = math.sqrt(0.4 * 0.6 / 20 + 0.2 * 0.8 / 10)  # unpooled
    assert versus["diff"] == pytest.approx(0.2)
    assert versus["ci"] == pytest.approx([0.2 - Z95 * se, 0.2 + Z95 * se], abs=1e-9)
    assert versus["p_value"] == pytest.approx(math.erfc(0.2 / se / math.sqrt(2)), rel=1e-9)
    assert versus["p_value"] == pytest.approx(0.2320, abs=1e-4)


def test_report_without_experiment_uses_logged_arms_first_by_name_as_control():
    log = events_table([("u1", "impression", "b"), ("u2", "impression", "a"), ("u2", "click", "a")])
    report = experiment_report(log)
    assert list(report["arms"]) == ["a", "b"] and report["control"] == "a"
    assert report["arms"]["b"]["declared"] is False and report["arms"]["b"]["kind"] is None
    assert report["arms"]["b"]["vs_control"]["diff"] == -1.0
    assert experiment_report(log, control="b")["arms"]["a"]["vs_control"]["diff"] == 1.0


def test_report_lists_undeclared_arms_after_declared_ones():
    log = events_table([("u1", "impression", "old-arm"), ("u1", "impression", "a0")])
    report = experiment_report(log, experiment(1, 1))
    assert list(report["arms"]) == ["a0", "a1", "old-arm"]
    assert report["arms"]["old-arm"]["declared"] is False


def test_report_edge_cases():
    empty = experiment_report(events_table([]), experiment(1, 1))
    assert empty["arms"]["a1"]["impressions"] == 0 and empty["unassigned"]["events"] == 0
    no_arms = events_table([("u1", "impression", None)]).set_column(
        3, "arm", pa.nulls(1)
    )  # an all-null column (type null), as a log written before experiments existed
    assert experiment_report(no_arms)["arms"] == {}
    with pytest.raises(RecstackError, match=r"lacks columns \['arm'\]"):
        experiment_report(small_log().drop_columns(["arm"]))
    with pytest.raises(RecstackError, match="control arm 'zz'"):
        experiment_report(small_log(), control="zz")


def test_report_renders_as_a_table():
    report = experiment_report(small_log(), experiment(1, 1, 1))
    console = Console(record=True, width=200)
    console.print(render_report(report))
    text = console.export_text()
    assert "a1" in text and "40.00 %" in text and "control" in text and "unassigned" in text


# TODO(experiments report CLI): once recstack.serving.event_log.read_events exists, add an
# end-to-end test of `recstack experiments report --log DIR --config serve.yaml --json_out X`.
