"""Losses against a reference full softmax and hand-computed cases (training/losses.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from recstack.errors import RecstackError
from recstack.training.losses import (
    LossConfig,
    RecLoss,
    _row_scores,
    full_cross_entropy,
    gbce_loss,
    pool_log_q,
    row_negatives,
    sampled_softmax,
)

N_ITEMS, D, N = 23, 5, 6


def make_case(seed: int = 0, n_items: int = N_ITEMS, n: int = N):
    """(query [n, d] leaf, table [n_items + 1, d] leaf, target [n] in 1..n_items)."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(n, D, generator=g, dtype=torch.float64).requires_grad_()
    table = torch.randn(n_items + 1, D, generator=g, dtype=torch.float64).requires_grad_()
    target = torch.randint(1, n_items + 1, (n,), generator=g)
    return query, table, target


def reference_ce(query, table, target):
    """Plain softmax cross-entropy over items 1..n (PAD column dropped)."""
    return F.cross_entropy(query @ table[1:].T, target - 1)


def grads(loss, *leaves):
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("chunk", [3, 7, N_ITEMS, 1000])
def test_chunked_full_ce_matches_plain_value_and_grads(chunk):
    query, table, target = make_case()
    expected = reference_ce(query, table, target)
    loss = full_cross_entropy(query, target, lambda i: table[i], N_ITEMS, chunk)
    torch.testing.assert_close(loss, expected.float(), rtol=1e-6, atol=1e-6)
    for got, want in zip(grads(loss, query, table), grads(expected, query, table), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_chunked_full_ce_saves_no_full_logits_for_backward():
    n_items, chunk = 400, 16
    query, table, target = make_case(n_items=n_items)
    saved: list[int] = []

    def record(t):
        saved.append(t.numel())
        return t

    def peak_saved(chunk_items):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
            loss = full_cross_entropy(query, target, lambda i: table[i], n_items, chunk_items)
        loss.backward()
        return max(saved)

    assert peak_saved(n_items) >= N * n_items  # the plain path keeps its logits...
    assert peak_saved(chunk) < N * n_items / 4  # ...the chunked one keeps O(N + chunk) per chunk
    with torch.no_grad():  # no checkpointing needed without autograd
        assert full_cross_entropy(query, target, lambda i: table[i], n_items, chunk).isfinite()


def test_full_ce_runs_the_item_tower_once_per_call():
    """A two-tower's item tower is the costly part of full CE: once per step, whatever the
    number of chunks, and not again in backward."""
    query, table, target = make_case()
    calls = []

    def tower(item_idx):
        calls.append(item_idx.numel())
        return table[item_idx] * 1.0

    loss = full_cross_entropy(query, target, tower, N_ITEMS, chunk_items=3)
    loss.backward()
    assert calls == [N_ITEMS]
    assert table.grad is not None and query.grad is not None


def test_a_capped_in_batch_pool_is_a_random_subset_with_logq_for_its_size():
    n_items, n, cap = 40, 12, 5
    query, table, target = make_case(seed=1, n_items=n_items, n=n)
    counts = torch.arange(n_items + 1, dtype=torch.float64) % 7 + 1.0
    log_p = RecLoss(LossConfig(), n_items, counts).item_log_q().double()

    def loss(cap, seed=3):
        generator = torch.Generator().manual_seed(seed)
        return sampled_softmax(query, target, lambda i: table[i], "in_batch", 0, log_p,
                               generator=generator, reduction="none", in_batch_cap=cap)  # fmt: skip

    rows = torch.randperm(n, generator=torch.Generator().manual_seed(3))[:cap]
    pool = target[rows].tolist()
    expected = []
    for r in range(n):  # every logit minus log(cap p_j); the row's own item is masked
        corrected = [query[r] @ table[j] - math.log(cap) - log_p[j] for j in pool]
        positive = query[r] @ table[target[r]] - math.log(cap) - log_p[target[r]]
        others = [c for c, j in zip(corrected, pool, strict=True) if j != target[r]]
        expected.append(torch.logsumexp(torch.stack([positive, *others]), 0) - positive)
    torch.testing.assert_close(loss(cap), torch.stack(expected))
    torch.testing.assert_close(loss(n), loss(None))  # a cap at the batch size changes nothing
    assert not torch.equal(loss(cap, seed=3), loss(cap, seed=4))  # a new subset per draw


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("logq", [True, False])
def test_sampled_with_every_item_as_uniform_negative_equals_full_ce(logq, dtype):
    query, table, target = (x.to(dtype) if x.is_floating_point() else x for x in make_case())
    everything = torch.randperm(N_ITEMS, generator=torch.Generator().manual_seed(1)) + 1
    uniform_log_q = torch.full((N_ITEMS + 1,), -math.log(N_ITEMS))
    loss = sampled_softmax(
        query,
        target,
        lambda i: table[i],
        "uniform",
        N_ITEMS,
        uniform_log_q,
        logq,
        negatives=everything,
    )
    expected = reference_ce(query, table, target)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_in_batch_logq_by_hand():
    # Items 1 (popular, count 6), 2 (rare, count 2), 3 (count 2): p = 0.6, 0.2, 0.2.
    # Two rows, targets [1, 2]; the in-batch pool is N = 2 draws, so q_j = 2 p_j.
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    query = torch.tensor([[2.0, 1.0], [0.5, -1.0]], requires_grad=True)
    target = torch.tensor([1, 2])
    loss_fn = RecLoss(
        LossConfig(kind="sampled", negatives="in_batch"), 3, torch.tensor([0.0, 6.0, 2.0, 2.0])
    )
    # Raw logits: row 0: s(1) = 2, s(2) = 1; row 1: s(2) = -1, s(1) = 0.5.
    log_q1, log_q2 = math.log(2 * 0.6), math.log(2 * 0.2)
    row0_raw = -2.0 + math.log(math.exp(2.0) + math.exp(1.0))  # positive 1, negative 2
    row1_raw = 1.0 + math.log(math.exp(-1.0) + math.exp(0.5))  # positive 2, negative 1
    c0, c1 = 2.0 - log_q1, 1.0 - log_q2  # row 0 corrected: positive 1, negative 2
    row0 = -c0 + math.log(math.exp(c0) + math.exp(c1))
    c0, c1 = -1.0 - log_q2, 0.5 - log_q1  # row 1 corrected: positive 2, negative 1
    row1 = -c0 + math.log(math.exp(c0) + math.exp(c1))

    got = sampled_softmax(
        query, target, lambda i: table[i], "in_batch", 0, loss_fn.item_log_q(), reduction="none"
    )
    assert got.tolist() == pytest.approx([row0, row1], abs=1e-6)
    assert loss_fn(query, target, lambda i: table[i]).item() == pytest.approx((row0 + row1) / 2)
    raw = sampled_softmax(
        query,
        target,
        lambda i: table[i],
        "in_batch",
        0,
        loss_fn.item_log_q(),
        logq=False,
        reduction="none",
    )
    assert raw.tolist() == pytest.approx([row0_raw, row1_raw], abs=1e-6)
    # Sign: the popular item's logit is lowered more (log q1 > log q2), so a row whose negative is
    # popular loses less, and a row whose negative is rare (and positive popular) loses more.
    assert log_q1 > log_q2
    assert got[1] < raw[1] and got[0] > raw[0]


def test_mixed_log_q_is_the_mixture_expected_count():
    item_log_p = torch.log(torch.tensor([0.0, 0.5, 0.3, 0.2]))
    item_idx = torch.tensor([1, 3])
    got = pool_log_q(item_idx, item_log_p, n_in_batch=4, n_uniform=6)
    expected = [math.log(4 * 0.5 + 6 / 3), math.log(4 * 0.2 + 6 / 3)]
    assert got.tolist() == pytest.approx(expected)
    uniform = pool_log_q(item_idx, item_log_p, n_in_batch=0, n_uniform=6)
    assert uniform.tolist() == pytest.approx([math.log(2.0)] * 2)


def test_accidental_hits_are_masked():
    query, table, target = make_case(n=1)
    hits = target.repeat(5)  # every negative is the row's own positive
    log_q = torch.zeros(N_ITEMS + 1)

    def vectors(item_idx):
        return table[item_idx]

    for kind in ("uniform", "mixed", "in_batch"):
        negatives = None if kind == "in_batch" else hits
        loss = sampled_softmax(query, target, vectors, kind, 5, log_q, negatives=negatives)
        assert loss.item() == pytest.approx(0.0)  # only the positive remains
    positive = (query[0] @ table[target[0]]).item()
    loss = gbce_loss(query, target, vectors, N_ITEMS, 5, t=0.0, negatives=hits)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-positive))))


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0])
def test_gbce_by_hand(t):
    table = torch.tensor([[0.0], [1.0], [-2.0], [0.5], [3.0], [0.0]], requires_grad=True)
    query = torch.tensor([[1.5]], requires_grad=True)
    target, negatives = torch.tensor([1]), torch.tensor([2, 4, 1])  # the 1 is an accidental hit
    alpha = 3 / (5 - 1)
    beta = {0.0: 1.0, 1.0: alpha}.get(t, alpha * (t * (1 - 1 / alpha) + 1 / alpha))

    def log_sigmoid(x):
        return -math.log(1 + math.exp(-x))

    expected = -beta * log_sigmoid(1.5) - log_sigmoid(3.0) - log_sigmoid(-4.5)
    got = gbce_loss(query, target, lambda i: table[i], 5, 3, t, negatives=negatives)
    assert got.item() == pytest.approx(expected)


CONFIGS = [
    LossConfig(kind="ce"),
    LossConfig(kind="ce", chunk_items=4),
    LossConfig(kind="sampled", negatives="uniform", n_negatives=8),
    LossConfig(kind="sampled", negatives="in_batch"),
    LossConfig(kind="sampled", negatives="mixed", n_negatives=8),
    LossConfig(kind="gbce", n_negatives=8),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.kind}-{c.negatives}")
def test_gradient_reaches_query_and_item_vectors(config):
    query, table, target = make_case()
    counts = torch.arange(N_ITEMS + 1, dtype=torch.float32)
    loss = RecLoss(config, N_ITEMS, counts)(
        query, target, lambda i: table[i], torch.Generator().manual_seed(0)
    )
    assert loss.ndim == 0 and loss.isfinite()
    g_query, g_table = grads(loss, query, table)
    assert g_query.abs().sum() > 0 and g_table.abs().sum() > 0
    assert g_table[0].abs().sum() == 0  # PAD is never a class


@pytest.mark.parametrize("config", CONFIGS[2:], ids=lambda c: f"{c.kind}-{c.negatives}")
def test_same_seed_same_loss(config):
    query, table, target = make_case()
    loss_fn = RecLoss(config, N_ITEMS)

    def run(seed):
        return loss_fn(query, target, lambda i: table[i], torch.Generator().manual_seed(seed))

    assert run(3).item() == run(3).item()
    if config.negatives != "in_batch" or config.kind == "gbce":
        assert run(3).item() != run(4).item()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "softmax"),
        ("negatives", "hard"),
        ("n_negatives", 0),
        ("chunk_items", 0),
        ("in_batch_cap", 0),
        ("gbce_t", 1.5),
        ("gbce_t", -0.1),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(RecstackError, match=field):
        LossConfig(**{field: value})


def test_item_counts_are_checked_and_not_saved():
    with pytest.raises(RecstackError, match="item_counts has shape"):
        RecLoss(LossConfig(), 5, torch.ones(5))
    with pytest.raises(RecstackError, match=">= 0"):
        RecLoss(LossConfig(), 2, torch.tensor([0.0, -1.0, 3.0]))
    with pytest.raises(RecstackError, match="n_items"):
        RecLoss(LossConfig(kind="gbce"), 1)
    loss_fn = RecLoss(LossConfig(), 3, torch.tensor([9.0, 0.0, 1.0, 3.0]))
    assert "item_counts" not in loss_fn.state_dict()
    # PAD is ignored, a zero count is raised to 1: p = [1, 1, 3] / 5
    assert loss_fn.item_log_q()[1:].exp().tolist() == pytest.approx([0.2, 0.2, 0.6])


def test_gbce_draws_negatives_per_row_and_scores_them_either_way():
    generator = torch.Generator().manual_seed(0)
    drawn = row_negatives(64, 1000, 8, torch.device("cpu"), generator)
    assert drawn.shape == (64, 8) and len({tuple(r) for r in drawn.tolist()}) == 64
    assert drawn.min() >= 1 and drawn.max() <= 1000
    for dim, k in ((64, 32), (4, 8)):  # through the [N, n_items] logits, then gathered
        table, query = torch.randn(1001, dim), torch.randn(64, dim)
        negatives = torch.randint(1, 1001, (64, k), generator=generator)
        expected = torch.einsum("nd,nkd->nk", query, table[negatives])
        got = _row_scores(query, negatives, torch.nn.Embedding.from_pretrained(table), 1000)
        assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.kind}-{c.negatives}")
def test_masked_weighs_pad_rows_zero_at_fixed_shapes(config):
    """RecLoss.masked (CUDA's sync-free path): the PAD rows stay in but weigh nothing."""
    query, table, target = make_case(n=8)
    target = target.clone()
    target[[1, 4, 5]] = 0  # PAD_IDX positions, as in a padded SASRec window
    keep = target != 0
    loss_fn = RecLoss(config, N_ITEMS, torch.arange(N_ITEMS + 1, dtype=torch.float32))
    loss = loss_fn.masked(query, target, lambda i: table[i])
    assert loss.ndim == 0 and loss.isfinite()
    g_query, _ = grads(loss, query, table)
    assert g_query[~keep].abs().sum() == 0 and g_query[keep].abs().sum() > 0
    if config.kind == "ce":  # no negatives drawn: exactly the loss over the kept rows
        expected = loss_fn(query[keep], target[keep], lambda i: table[i])
        torch.testing.assert_close(loss, expected)
