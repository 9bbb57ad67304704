"""The search-space YAML and the dotted config paths trials are built from."""

from pathlib import Path

import optuna
import pytest
import yaml

from recstack.errors import RecstackError
from recstack.training.train_cli import check_config
from recstack.training.tuning.search_space import load_search_space
from recstack.training.tuning.trial_config import MISSING, get_dotted, set_dotted, trial_config
from recstack.training.tuning.tune_cli import check_search_space

CONFIGS = Path(__file__).parents[3] / "configs"


def write(tmp_path: Path, space: dict) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.mark.parametrize("path", sorted((CONFIGS / "search").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_search_spaces_load(path):
    space = load_search_space(path)
    assert space.params and space.fixed["trainer.max_epochs"] > 0
    assert isinstance(space.make_pruner(), optuna.pruners.MedianPruner)


def test_conditional_params_are_sampled_only_when_their_condition_holds(tmp_path):
    space = load_search_space(
        write(
            tmp_path,
            {
                "params": {
                    "model.loss.kind": {"type": "categorical", "choices": ["ce", "sampled"]},
                    "model.loss.n_negatives": {
                        "type": "int",
                        "low": 8,
                        "high": 64,
                        "log": True,
                        "if": {"model.loss.kind": "sampled"},
                    },
                    "model.optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                }
            },
        )
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = space.suggest(trial)
        assert ("model.loss.n_negatives" in values) == (values["model.loss.kind"] == "sampled")
        assert 1e-4 <= values["model.optim.lr"] <= 1e-2
        seen.add(values["model.loss.kind"])
        study.tell(trial, 0.0)
    assert seen == {"ce", "sampled"}
    # the base config's values become the default trial where they lie in the space
    values = space.values_of({"model.loss.kind": "ce", "model.optim.lr": 0.5})
    assert values == {"model.loss.kind": "ce"}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"params": {"a": {"type": "normal"}}}, "type must be one of"),
        ({"params": {"a": {"type": "float", "low": 1}}}, "search param a"),
        ({"params": {"a": {"type": "int", "low": 1, "high": 2, "choices": [1]}}}, "unknown keys"),
        (
            {"params": {"a": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}},
            "search param a",
        ),
        (
            {
                "params": {
                    "b": {"type": "int", "low": 1, "high": 2, "if": {"a": 1}},
                    "a": {"type": "int", "low": 1, "high": 2},
                }
            },
            "not a param listed before",
        ),
        (
            {"fixed": {"a": 1}, "params": {"a": {"type": "int", "low": 1, "high": 2}}},
            "both fixed and searched",
        ),
        (
            {"pruner": {"kind": "magic"}, "params": {"a": {"type": "int", "low": 1, "high": 2}}},
            "magic",
        ),
        (
            {
                "pruner": {"kind": "median", "warmup": 3},
                "params": {"a": {"type": "int", "low": 1, "high": 2}},
            },
            "pruner median",
        ),
        (
            {"samplers": {}, "params": {"a": {"type": "int", "low": 1, "high": 2}}},
            "unknown sections",
        ),
        ({"fixed": {"a": 1}}, "needs a `params:`"),
    ],
)
def test_bad_search_spaces_are_refused_with_the_param_at_fault(tmp_path, space, message):
    with pytest.raises(RecstackError, match=message):
        load_search_space(write(tmp_path, space))


def test_dotted_keys_reach_into_init_args_like_the_command_line():
    base = {
        "model": {"class_path": "Task", "init_args": {"optim": {"lr": 0.1}}},
        "data": {"batch_size": 8},
    }
    config = trial_config(
        base,
        {
            "model.optim.lr": 0.5,
            "model.model.dim": 16,
            "data.batch_size": 4,
            "trainer.max_epochs": 3,
        },
        Path("runs/x"),
    )
    assert config["model"]["init_args"]["optim"]["lr"] == 0.5
    assert config["model"]["init_args"]["model"]["dim"] == 16
    assert config["data"]["batch_size"] == 4 and config["trainer"]["max_epochs"] == 3
    assert config["run_dir"] == "runs/x"
    assert base["model"]["init_args"]["optim"]["lr"] == 0.1  # the base is not modified
    assert get_dotted(config, "model.optim.lr") == 0.5
    assert get_dotted(config, "model.init_args.optim.lr") == 0.5
    assert get_dotted(config, "model.optim.beta2", MISSING) is MISSING
    with pytest.raises(RecstackError, match="not a section"):
        set_dotted(config, "data.batch_size.x", 1)


@pytest.mark.parametrize(
    ("search", "model"),
    [("sasrec", "sasrec"), ("sasrec_ml100k", "sasrec"), ("two_tower", "two_tower")],
)
def test_shipped_search_spaces_fit_their_training_configs(tmp_path, search, model):
    """Every searched key is a setting of the matching ML-100K config, and the config with
    the fixed values and each param's first value parses (no trial would fail on a key)."""
    space = load_search_space(CONFIGS / "search" / f"{search}.yaml")
    base = yaml.safe_load((CONFIGS / "train" / f"{model}_ml100k.yaml").read_text())
    resolved = check_search_space(base, space, tmp_path)
    for param in space.params:
        assert get_dotted(resolved, param.name, MISSING) is not MISSING, param.name
    first = {
        p.name: p.distribution.choices[0]
        if isinstance(p.distribution, optuna.distributions.CategoricalDistribution)
        else p.distribution.low
        for p in space.params
    }
    check_config(trial_config(base, {**space.fixed, **first}, tmp_path / "t"))
