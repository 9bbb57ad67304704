"""The data module hands its facts to the task once, and learns once what the task trains on:
neither reads the other through the trainer afterwards."""

import numpy as np
import pytest

from recstack.errors import DataError
from recstack.training.data.datamodule import RecDataModule
from recstack.training.data.facts import TrainSamples
from recstack.training.tasks.next_item import NextItemTask
from recstack.training.tasks.retrieval import RetrievalTask


def test_facts_are_the_datasets_sizes_and_eval_sets(chain_dir, tmp_path):
    data = RecDataModule(chain_dir, batch_size=4, eval_batch_size=8, cache_dir=tmp_path)
    facts = data.facts()
    assert (facts.n_items, facts.n_users) == (data.data.n_items, data.data.n_users)
    assert facts.item_counts.shape == (facts.n_items + 1,) and facts.item_counts[0] == 0
    assert facts.user_codes.shape[0] == facts.n_users
    assert facts.item_tags.shape[0] == facts.item_cats.shape[0] == facts.n_items + 1
    assert facts.eval_batch_size == 8
    assert facts.eval_set("valid") is data.eval_set("valid")  # built once, shared
    assert facts.eval_context("test").shape[0] == facts.n_users


def test_the_loader_serves_what_the_task_said(chain_dir, tmp_path):
    data = RecDataModule(chain_dir, batch_size=4, cache_dir=tmp_path)
    data.setup("fit")
    with pytest.raises(DataError, match="train_on"):
        data.train_dataloader()
    data.train_on(TrainSamples("windows", 3))
    batch = next(iter(data.train_dataloader()))
    assert batch["items"].shape[1] <= 3
    data.train_on(TrainSamples("events", 2))
    batch = next(iter(data.train_dataloader()))
    assert batch["history"].shape[1] <= 2 and "context" in batch


def test_tasks_name_their_samples_before_the_net_exists():
    sasrec = NextItemTask(model={"history_len": 7})
    assert sasrec.net is None and sasrec.train_samples() == TrainSamples("windows", 7)
    two_tower = RetrievalTask(model={"history_len": 5})
    assert two_tower.net is None and two_tower.train_samples() == TrainSamples("events", 5)


def test_a_task_builds_its_net_from_the_facts(chain_dir, tmp_path):
    facts = RecDataModule(chain_dir, cache_dir=tmp_path).facts()
    task = RetrievalTask()
    task.build_from_data(facts)
    assert task.sizes["n_items"] == facts.n_items
    np.testing.assert_array_equal(task.net.item_tags.numpy(), facts.item_tags)
