"""Metric functions against hand-computed cases (recstack/ranking_metrics.py and the torch
ranking of training/eval/metrics.py)."""

import math

import numpy as np
import pytest
import torch

from recstack import ranking_metrics
from recstack.eval_set import EvalSet
from recstack.ranking_metrics import accuracy_metrics, beyond_accuracy, history_popularity
from recstack.schema import PAD_IDX
from recstack.training.eval.evaluator import EvalBatch, evaluate
from recstack.training.eval.metrics import target_ranks, top_k_items

INF = float("-inf")


def test_ranks_break_ties_towards_lower_item_idx():
    #                     PAD  1    2    3    4    5
    scores = torch.tensor([[INF, 1.0, 3.0, 3.0, 2.0, 3.0]])
    rows = torch.zeros(5, dtype=torch.long)
    items = torch.tensor([1, 2, 3, 4, 5])
    # 2, 3, 5 tie at 3.0 -> ranks 1, 2, 3 by item_idx; then 4 (2.0) and 1 (1.0).
    assert target_ranks(scores, rows, items).tolist() == [5, 1, 2, 4, 3]
    # chunking does not change anything
    assert target_ranks(scores, rows, items, max_elements=1).tolist() == [5, 1, 2, 4, 3]


def test_top_k_uses_the_same_order_and_hides_masked_items():
    scores = torch.tensor(
        [
            [INF, 1.0, 3.0, 3.0, 2.0, 3.0],
            [INF, 0.0, 0.0, 0.0, 0.0, 0.0],  # all tied -> item order
            [INF, INF, INF, 5.0, INF, INF],  # only one unmasked item
        ]
    )
    top = top_k_items(scores, 4)
    assert top.tolist() == [[2, 3, 5, 4], [1, 2, 3, 4], [3, PAD_IDX, PAD_IDX, PAD_IDX]]
    assert top_k_items(scores, 99).shape == (3, 6)  # capped at the row length


def test_top_k_agrees_with_ranks_on_random_ties():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (20, 30), generator=gen).float()  # many ties
    scores[:, 0] = INF
    top = top_k_items(scores, 7)
    rows = torch.arange(20).repeat_interleave(30)
    items = torch.arange(30).repeat(20)
    ranks = target_ranks(scores, rows, items).view(20, 30)
    for r in range(20):
        expected = [i for i in sorted(range(30), key=lambda i: int(ranks[r, i]))][:7]
        assert top[r].tolist() == expected


@pytest.mark.parametrize("k", [1, 7, 30, 99])
def test_numpy_ranks_and_top_k_equal_the_torch_ones(k):
    """Serving's torch-free full ranking follows the evaluator's rule exactly."""
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (20, 30), generator=gen).float()  # many ties
    scores[:, 0] = INF
    scores[3, 5:] = INF  # a row with fewer unmasked items than k
    rows = torch.arange(20).repeat_interleave(30)
    items = torch.arange(30).repeat(20)
    as_numpy = scores.numpy(), rows.numpy(), items.numpy()
    expected = target_ranks(scores, rows, items).numpy()
    assert (ranking_metrics.target_ranks(*as_numpy) == expected).all()
    assert (ranking_metrics.target_ranks(*as_numpy, max_elements=7) == expected).all()
    assert (ranking_metrics.top_k_items(scores.numpy(), k) == top_k_items(scores, k).numpy()).all()


def test_accuracy_one_and_several_targets():
    # user 0: one target at rank 3; user 1: targets at ranks 1 and 4; user 2: 3 targets at 2, 5, 30
    ranks = np.array([3, 1, 4, 2, 5, 30])
    indptr = np.array([0, 1, 3, 6])
    m = accuracy_metrics(ranks, indptr, ks=(2, 5))
    g = lambda r: 1 / math.log2(r + 1)  # noqa: E731
    np.testing.assert_allclose(m["hr@2"], [0, 1, 1])
    np.testing.assert_allclose(m["hr@5"], [1, 1, 1])
    np.testing.assert_allclose(m["recall@2"], [0, 1 / 2, 1 / 3])
    np.testing.assert_allclose(m["recall@5"], [1, 1, 2 / 3])
    np.testing.assert_allclose(m["ndcg@2"], [0, 1 / (1 + g(2)), g(2) / (1 + g(2))])
    np.testing.assert_allclose(
        m["ndcg@5"],
        [g(3), (1 + g(4)) / (1 + g(2)), (g(2) + g(5)) / (1 + g(2) + g(3))],
    )
    np.testing.assert_allclose(m["mrr@2"], [0, 1, 1 / 2])
    np.testing.assert_allclose(m["mrr@5"], [1 / 3, 1, 1 / 2])
    assert m["ndcg@5"][0] == pytest.approx(0.5)  # 1 / log2(4)


def test_accuracy_suffix_names_sampled_metrics():
    m = accuracy_metrics(np.array([1]), np.array([0, 1]), ks=(10,), suffix="_sampled100")
    assert set(m) == {
        "hr@10_sampled100",
        "recall@10_sampled100",
        "ndcg@10_sampled100",
        "mrr@10_sampled100",
    }


def test_beyond_accuracy_hand_computed():
    n_items, n_hist_users = 5, 4
    pop = np.array([0, 4, 2, 1, 0, 1])  # users having each item (PAD first)
    top = np.array([[1, 2, 3], [1, 4, PAD_IDX]])  # user 1 has only 2 recommendations
    hist_pop = np.array([0.5, 0.25])
    per_user, overall = beyond_accuracy(top, (2, 3), n_items, pop, n_hist_users, hist_pop)
    assert overall["coverage@2"] == pytest.approx(3 / 5)  # {1, 2, 4}
    assert overall["coverage@3"] == pytest.approx(4 / 5)  # {1, 2, 3, 4}
    np.testing.assert_allclose(per_user["arp@2"], [(1 + 0.5) / 2, (1 + 0) / 2])
    np.testing.assert_allclose(per_user["arp@3"], [(1 + 0.5 + 0.25) / 3, 0.5])
    mean_hist = 0.375
    assert overall["pop_lift@2"] == pytest.approx((np.mean([0.75, 0.5]) - mean_hist) / mean_hist)
    # novelty: -log2(pop / 4), never-seen item 4 counts as pop 1
    np.testing.assert_allclose(per_user["novelty@2"], [(0 + 1) / 2, (0 + 2) / 2])
    np.testing.assert_allclose(per_user["novelty@3"], [(0 + 1 + 2) / 3, 1.0])


def test_history_popularity_uses_distinct_items():
    pop = np.array([0, 4, 2, 1])
    indptr = np.array([0, 3, 4])
    items = np.array([1, 1, 3, 2])  # user 0 repeats item 1
    np.testing.assert_allclose(history_popularity(indptr, items, pop, 4), [(1 + 0.25) / 2, 0.5])


def _eval_set(histories, targets, n_items, popularity=None, n_history_users=None) -> EvalSet:
    hl = np.array([len(h) for h in histories])
    tl = np.array([len(t) for t in targets])
    pop = np.ones(n_items + 1, dtype=np.int64) if popularity is None else np.asarray(popularity)
    pop[0] = 0
    return EvalSet(
        users=np.arange(len(histories), dtype=np.int64),
        history_indptr=np.concatenate([[0], np.cumsum(hl)]).astype(np.int64),
        history_items=np.array([i for h in histories for i in h], dtype=np.int64),
        target_indptr=np.concatenate([[0], np.cumsum(tl)]).astype(np.int64),
        target_items=np.array([i for t in targets for i in t], dtype=np.int64),
        n_items=n_items,
        item_popularity=pop,
        n_history_users=len(histories) if n_history_users is None else n_history_users,
    )


def test_evaluate_masks_seen_items_and_breaks_ties():
    # 6 items; scores = fixed row, the same for everyone
    row = torch.tensor([9.0, 6.0, 5.0, 5.0, 4.0, 3.0, 5.0])  # PAD gets 9 but is always masked

    def score_fn(batch: EvalBatch) -> torch.Tensor:
        return row.expand(batch.users.shape[0], -1)

    es = _eval_set(
        histories=[[1], [1, 2], [5]],
        targets=[[3], [6], [2, 6]],
        n_items=6,
    )
    result = evaluate(score_fn, es, ks=(1, 2), device="cpu")
    # user 0: item 1 masked -> order 2,3,6,4,5 (2,3,6 tie at 5 -> by idx): target 3 has rank 2
    # user 1: 1,2 masked -> order 3,6,4,5: target 6 has rank 2
    # user 2: 5 masked -> order 1,2,3,6,4: targets 2 (rank 2), 6 (rank 4)
    assert result.target_ranks.tolist() == [2, 2, 2, 4]
    np.testing.assert_allclose(result.per_user["hr@1"], [0, 0, 0])
    np.testing.assert_allclose(result.per_user["hr@2"], [1, 1, 1])
    np.testing.assert_allclose(result.per_user["recall@2"], [1, 1, 0.5])
    np.testing.assert_allclose(result.per_user["mrr@2"], [0.5, 0.5, 0.5])
    g2 = 1 / math.log2(3)
    np.testing.assert_allclose(result.per_user["ndcg@2"], [g2, g2, g2 / (1 + g2)])
    # top-2 lists: [2, 3], [3, 6], [1, 2] -> 4 distinct items of 6
    assert result.metrics["coverage@2"] == pytest.approx(4 / 6)
    assert result.metrics["coverage@1"] == pytest.approx(3 / 6)  # [2], [3], [1]
    assert set(result.metrics) == {
        f"{m}@{k}"
        for m in ("hr", "recall", "ndcg", "mrr", "coverage", "arp", "pop_lift", "novelty")
        for k in (1, 2)
    }


def test_popularity_lift_through_evaluate():
    # popularity shares: items 1..4 held by 4, 2, 1, 1 of 4 users
    pop = np.array([0, 4, 2, 1, 1])
    es = _eval_set([[3], [4]], [[1], [2]], n_items=4, popularity=pop, n_history_users=4)

    def most_popular(batch: EvalBatch) -> torch.Tensor:
        return torch.tensor(pop, dtype=torch.float32).expand(batch.users.shape[0], -1)

    result = evaluate(most_popular, es, ks=(1,), device="cpu")
    # both recommend item 1 (share 1.0); histories have share 0.25 -> lift (1 - 0.25) / 0.25 = 3
    assert result.metrics["arp@1"] == pytest.approx(1.0)
    assert result.metrics["pop_lift@1"] == pytest.approx(3.0)
    assert result.metrics["novelty@1"] == pytest.approx(0.0)
    assert result.metrics["hr@1"] == pytest.approx(0.5)
