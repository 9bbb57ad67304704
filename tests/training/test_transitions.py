"""SASRec's transition term: the follower table, the loss's logit bonus and the model's gate
(training/data/transitions.py, training/losses.py, training/models/sasrec.py)."""

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from recstack.errors import RecstackError
from recstack.training.data.datamodule import RecDataModule
from recstack.training.data.transitions import follower_table
from recstack.training.losses import LossConfig, RecLoss, full_cross_entropy
from recstack.training.models.sasrec import SASRec, SASRecConfig
from recstack.training.tasks.next_item import NextItemTask


def test_follower_table_counts_next_items_most_frequent_first():
    events = pl.DataFrame(  # user 0: 1 2 3, user 1: 1 2 4, user 2: 1 3, user 3: 4
        {"user_idx": [0, 0, 0, 1, 1, 1, 2, 2, 3], "item_idx": [1, 2, 3, 1, 2, 4, 1, 3, 4]}
    )
    items, counts = follower_table(events, n_items=4, k=2)
    assert items.shape == counts.shape == (5, 2)
    assert items[1].tolist() == [2, 3] and counts[1].tolist() == [2, 1]  # 1->2 twice, 1->3 once
    assert items[2].tolist() == [3, 4] and counts[2].tolist() == [1, 1]  # a tie: smaller id first
    assert items[3].tolist() == [0, 0] and counts[3].tolist() == [0, 0]  # nothing follows 3
    assert items[4].tolist() == [0, 0]  # user 3's single event is no transition
    assert follower_table(events, n_items=4, k=1)[0][1].tolist() == [2]  # k keeps the top


def _case(n_items=23, n=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(n, 5, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(n_items + 1, 5, generator=g, dtype=torch.float64)
    target = torch.randint(1, n_items + 1, (n,), generator=g)
    items = torch.randint(0, n_items + 1, (n, k), generator=g)
    items[:, 0] = target  # every row's target gets a bonus too
    items[0, 1] = 0  # an unused slot: PAD, ignored
    values = torch.rand(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    return query, table, target, items, values


@pytest.mark.parametrize("chunk", [4, 1000])
def test_full_ce_adds_the_bonus_to_those_logits_only(chunk):
    query, table, target, items, values = _case()
    logits = (query @ table[1:].T).clone()
    for row in range(items.shape[0]):
        for slot in range(items.shape[1]):
            if items[row, slot] > 0:
                logits[row, items[row, slot] - 1] = (
                    logits[row, items[row, slot] - 1] + values[row, slot]
                )
    expected = F.cross_entropy(logits, target - 1, reduction="none")
    got = full_cross_entropy(query, target, lambda i: table[i], 23, chunk, "none", (items, values))
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-6)
    want = torch.autograd.grad(expected.sum(), values)[0]
    torch.testing.assert_close(torch.autograd.grad(got.sum(), values)[0], want)


def test_only_full_ce_takes_a_bonus():
    query, table, target, items, values = _case()
    loss = RecLoss(LossConfig(kind="sampled"), 23)
    with pytest.raises(RecstackError, match="needs loss kind 'ce'"):
        loss(query, target, lambda i: table[i], bonus=(items, values))


def _net(followers=2):
    torch.manual_seed(0)
    net = SASRec(SASRecConfig(n_items=5, history_len=4, dim=8, n_heads=2, followers=followers))
    items = torch.tensor([[2, 3], [4, 0], [3, 1], [5, 0], [1, 2], [0, 0]])
    counts = torch.tensor([[3.0, 1.0], [2.0, 0.0], [1.0, 1.0], [4.0, 0.0], [1.0, 1.0], [0, 0]])
    net.set_followers(
        torch.cat([torch.zeros(1, 2).long(), items[:5]]), torch.cat([torch.zeros(1, 2), counts[:5]])
    )
    return net.eval()


def test_scores_add_the_gated_log_count_of_the_last_items_followers():
    net = _net()
    history, lengths = torch.tensor([[3, 1, 0]]), torch.tensor([2])  # last item 1: 1 -> 2 (x3), 3
    with torch.no_grad():
        state = net.last_hidden(history, lengths)
        plain = state @ net.all_item_vectors().T
        gate = F.softplus(net.transition_gate(state))[0, 0]
        scores = net.score_all(history, lengths)
    bonus = scores - plain
    torch.testing.assert_close(bonus[0, 2], gate * np.log1p(3.0))
    torch.testing.assert_close(bonus[0, 3], gate * np.log1p(1.0))
    assert torch.count_nonzero(bonus[0, [0, 1, 4, 5]]) == 0
    assert gate > 0


def test_training_counts_the_targets_own_occurrence_out():
    net = _net()
    state, last = torch.zeros(2, 8), torch.tensor([1, 1])
    _, bonus = net.transition_bonus(state, last, exclude=torch.tensor([2, 5]))
    gate = F.softplus(net.transition_gate.bias)
    torch.testing.assert_close(bonus[0], gate * torch.log1p(torch.tensor([2.0, 1.0])))  # 3 - 1
    torch.testing.assert_close(bonus[1], gate * torch.log1p(torch.tensor([3.0, 1.0])))  # not 5


def test_bad_transition_settings_are_refused():
    with pytest.raises(RecstackError, match="followers must be >= 0"):
        SASRecConfig(followers=-1)
    with pytest.raises(RecstackError, match="needs similarity 'dot'"):
        SASRecConfig(followers=8, similarity="cosine", temperature=0.05)
    with pytest.raises(RecstackError, match="trains with loss kind 'ce'"):
        NextItemTask(model={"followers": 4}, loss={"kind": "gbce"})


def test_the_task_takes_the_table_from_the_data_and_checkpoints_keep_it(chain_dir, tmp_path):
    facts = RecDataModule(chain_dir, cache_dir=tmp_path).facts()
    task = NextItemTask(
        model={"history_len": 5, "dim": 8, "followers": 3}, optim={"ema_decay": 0.9}
    )
    task.build_from_data(facts)
    items, counts = facts.followers(3)
    np.testing.assert_array_equal(task.net.follow_items.numpy(), items)
    np.testing.assert_array_equal(task.ema.module.follow_counts.numpy(), counts)  # EMA copy too
    assert counts.sum() > 0
    again = NextItemTask(model=dict(task.hparams["model"]), optim={"ema_decay": 0.9})
    again.load_state_dict(task.state_dict())
    np.testing.assert_array_equal(again.net.follow_items.numpy(), items)


def test_the_network_trains_as_without_the_term_and_the_gate_learns(chain_dir, tmp_path):
    facts = RecDataModule(chain_dir, cache_dir=tmp_path).facts()
    model = {"history_len": 5, "dim": 8, "n_heads": 2, "dropout": 0.0}
    grads, weights = {}, None
    for followers in (0, 3):
        task = NextItemTask(model=model | {"followers": followers})
        task.build_from_data(facts)
        task.loss_fn = RecLoss(LossConfig(), facts.n_items)
        task.log_train_loss = lambda *args: None  # no trainer here
        if weights is None:
            weights = task.net.state_dict()
        else:  # the same network weights as the run without the term
            task.net.load_state_dict(weights, strict=False)
        batch = {"items": torch.tensor([[1, 2, 3, 0]]), "targets": torch.tensor([[2, 3, 4, 0]])}
        task.training_step(batch, 0).backward()
        grads[followers] = {n: p.grad for n, p in task.net.named_parameters()}
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[3][name], grad, msg=name)
    assert grads[3]["transition_gate.bias"].abs() > 0
