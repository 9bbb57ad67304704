"""A/B experiments: config validation and hash assignment (the report: test_experiments_report.py)."""

import hashlib
import json
import math
import re
import subprocess
import sys
from collections import Counter

import pytest
from pydantic import ValidationError

from recstack.errors import RecstackError
from recstack.serving.experiments import (
    Arm,
    Experiment,
    assign,
    load_experiment,
)

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
