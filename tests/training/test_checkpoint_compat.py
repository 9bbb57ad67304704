"""Checkpoints saved before the history window got its one name (`max_len`, now
`history_len`) still load: resume, export and evaluation read their hyperparameters."""

import pytest

from recstack.errors import RecstackError
from recstack.training.tasks.next_item import NextItemTask


def test_a_checkpoints_max_len_becomes_history_len():
    saved = {"max_len": 20, "dim": 16, "n_heads": 1, "n_layers": 1, "n_items": 30}
    task = NextItemTask(model=saved)  # what load_from_checkpoint passes
    assert task.model_config["history_len"] == 20 and "max_len" not in task.model_config
    assert task.hparams["model"]["history_len"] == 20
    assert task.net is not None  # built from the checkpoint's sizes


def test_a_config_field_nobody_knows_is_still_refused():
    with pytest.raises(RecstackError, match="unknown SASRecConfig fields"):
        NextItemTask(model={"max_length": 20, "dim": 16, "n_heads": 1, "n_items": 30})
