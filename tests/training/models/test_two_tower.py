"""Two-tower retrieval model (training/models/two_tower.py): shapes, masking, config, training."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from recstack.errors import RecstackError
from recstack.training.models.two_tower import FeatureSizes, TwoTower, TwoTowerConfig

N_ITEMS = 20
COMBOS = list(itertools.product(("attention", "mean"), ("dot", "cosine")))


def sizes(**kw) -> FeatureSizes:
    base = dict(
        n_items=N_ITEMS,
        context={"hour": 25, "device": 4},
        user={"gender": 3, "age": 8},
        item_tags=5,
        item_cats={"year": 6, "decade": 3},
    )
    return FeatureSizes(**(base | kw))


def model(pooling="attention", similarity="cosine", seed=0, **kw) -> TwoTower:
    torch.manual_seed(seed)
    config = TwoTowerConfig(dim=16, history_len=8, pooling=pooling, similarity=similarity, **kw)
    m = TwoTower(config, sizes())
    g = torch.Generator().manual_seed(1)
    tags = (torch.rand(N_ITEMS, 5, generator=g) < 0.4).float()  # items.parquet order
    cats = torch.stack(
        [
            torch.randint(0, 6, (N_ITEMS,), generator=g),
            torch.randint(0, 3, (N_ITEMS,), generator=g),
        ],
        dim=1,
    )
    m.set_item_features(tags, cats)
    return m.eval()


def batch():
    history = torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0], [0, 0, 0, 0], [1, 2, 3, 4]])
    lengths = torch.tensor([3, 1, 0, 4])
    context = {"hour": torch.tensor([1, 2, 3, 24]), "device": torch.tensor([0, 1, 2, 3])}
    user = {"gender": torch.tensor([1, 2, 0, 1]), "age": torch.tensor([7, 0, 3, 1])}
    return history, lengths, context, user


@pytest.mark.parametrize(("pooling", "similarity"), COMBOS)
def test_shapes(pooling, similarity):
    m = model(pooling, similarity)
    history, lengths, context, user = batch()
    assert m.user_vectors(history, lengths, context, user).shape == (4, 16)
    assert m(history, lengths, context, user).shape == (4, 16)
    assert m.item_vectors(torch.tensor(3)).shape == (16,)
    assert m.item_vectors(torch.arange(6).view(2, 3)).shape == (2, 3, 16)
    assert m.score_all(history, lengths, context, user).shape == (4, N_ITEMS + 1)
    assert m.logits(torch.randn(4, 16), torch.randn(7, 16)).shape == (4, 7)


@pytest.mark.parametrize(("pooling", "similarity"), COMBOS)
def test_padding_and_ids_beyond_lengths_change_nothing(pooling, similarity):
    m = model(pooling, similarity)
    history, lengths, context, user = batch()
    ref = m.user_vectors(history, lengths, context, user)
    padded = torch.cat([history, torch.zeros(4, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(m.user_vectors(padded, lengths, context, user), ref)
    garbage = padded.clone()
    beyond = torch.arange(7)[None, :] >= lengths[:, None]
    garbage[beyond] = torch.randint(1, N_ITEMS + 1, (int(beyond.sum()),))
    torch.testing.assert_close(m.user_vectors(garbage, lengths, context, user), ref)


@pytest.mark.parametrize(("pooling", "similarity"), COMBOS)
def test_cold_users_are_finite(pooling, similarity):
    m = model(pooling, similarity)
    history = torch.randint(1, N_ITEMS + 1, (3, 5))  # ids present but lengths == 0
    lengths = torch.zeros(3, dtype=torch.long)
    out = m.user_vectors(history, lengths)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, m.user_vectors(torch.zeros(3, 1, dtype=torch.long), lengths))
    assert torch.isfinite(m.user_vectors(torch.zeros(3, 0, dtype=torch.long), lengths)).all()
    m.train()
    loss = m.score_all(history, lengths).logsumexp(-1).sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_recency_counts_from_the_most_recent_item():
    m = model("mean")
    # the same last items in the same recency slots give the same vector
    a = m.user_vectors(torch.tensor([[5, 6, 0, 0]]), torch.tensor([2]))
    b = m.user_vectors(torch.tensor([[5, 6]]), torch.tensor([2]))
    torch.testing.assert_close(a, b)
    # order matters (recency embeddings), for both poolings
    for pooling in ("mean", "attention"):
        m = model(pooling)
        x = m.user_vectors(torch.tensor([[5, 6, 7]]), torch.tensor([3]))
        y = m.user_vectors(torch.tensor([[7, 6, 5]]), torch.tensor([3]))
        assert not torch.allclose(x, y)


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_same_seed_same_model(pooling):
    m1, m2 = model(pooling, seed=3), model(pooling, seed=3)
    for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k1 == k2
        assert torch.equal(v1, v2)
    args = batch()
    assert torch.equal(m1.score_all(*args), m2.score_all(*args))
    assert not torch.equal(model(pooling, seed=4).score_all(*args), m1.score_all(*args))


def test_missing_fields_are_code_zero_and_unknown_fields_raise():
    m = model()
    history, lengths, context, _ = batch()
    zero_ctx = {
        "hour": torch.zeros(4, dtype=torch.long),
        "device": torch.zeros(4, dtype=torch.long),
    }
    zero_user = {k: torch.zeros(4, dtype=torch.long) for k in ("gender", "age")}
    expect = m.user_vectors(history, lengths, zero_ctx, zero_user)
    torch.testing.assert_close(m.user_vectors(history, lengths), expect)
    torch.testing.assert_close(m.user_vectors(history, lengths, {}, {}), expect)
    partial = {"hour": context["hour"]}
    torch.testing.assert_close(
        m.user_vectors(history, lengths, partial),
        m.user_vectors(history, lengths, partial | {"device": zero_ctx["device"]}),
    )
    # codes outside a field's range read as 0 (unknown)
    out_of_range = {"hour": torch.full((4,), 99), "device": torch.full((4,), -1)}
    torch.testing.assert_close(m.user_vectors(history, lengths, out_of_range), expect)
    with pytest.raises(RecstackError, match=r"unknown context feature.*\['weekday'\].*device"):
        m.user_vectors(history, lengths, {"weekday": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(RecstackError, match=r"unknown user feature.*'zip'.*'age', 'gender'"):
        m.user_vectors(history, lengths, context, {"zip": torch.zeros(4, dtype=torch.long)})


def test_no_feature_model():
    torch.manual_seed(0)
    m = TwoTower(TwoTowerConfig(dim=8, n_heads=2, history_len=4), FeatureSizes(n_items=5)).eval()
    out = m.score_all(torch.tensor([[1, 2], [0, 0]]), torch.tensor([2, 0]))
    assert out.shape == (2, 6)
    assert torch.isfinite(out).all()
    m.set_item_features(torch.zeros(6, 0), torch.zeros(5, 0, dtype=torch.long))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dim": 0}, "dim must be >= 1"),
        ({"dim": 10, "n_heads": 3}, "divisible by n_heads"),
        ({"n_heads": 0}, "n_heads must be >= 1"),
        ({"history_len": 0}, "history_len must be >= 1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, "dropout"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature"),
        ({"pooling": "max"}, "pooling must be one of"),
        ({"similarity": "l2"}, "similarity must be one of"),
    ],
)
def test_bad_config_raises(kw, match):
    with pytest.raises(RecstackError, match=match):
        TwoTowerConfig(**kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n_items": 0}, "n_items"),
        ({"item_tags": -1}, "item_tags"),
        ({"context": {"hour": 0}}, "'hour' needs cardinality >= 1"),
        ({"user": {"a.b": 3}}, "without '.'"),
    ],
)
def test_bad_sizes_raise(kw, match):
    with pytest.raises(RecstackError, match=match):
        sizes(**kw)


def test_cosine_vectors_have_unit_norm_and_dot_not():
    history, lengths, context, user = batch()
    m = model(similarity="cosine")
    ones = torch.ones(4)
    torch.testing.assert_close(m.user_vectors(history, lengths, context, user).norm(dim=-1), ones)
    torch.testing.assert_close(m.all_item_vectors()[1:].norm(dim=-1), torch.ones(N_ITEMS))
    # logits are bounded by 1 / temperature
    assert m.score_all(history, lengths, context, user).abs().max() <= 1 / 0.05 + 1e-4
    d = model(similarity="dot")
    assert not torch.allclose(d.user_vectors(history, lengths, context, user).norm(dim=-1), ones)


def test_set_item_features_checks_and_fills_buffers():
    m = model()
    assert m.item_tags.shape == (N_ITEMS + 1, 5) and m.item_tags.dtype == torch.float32
    assert m.item_cats.shape == (N_ITEMS + 1, 2) and m.item_cats.dtype == torch.long
    tags = torch.rand(N_ITEMS + 1, 5)
    m.set_item_features(tags=tags)
    torch.testing.assert_close(m.item_tags[1:], tags[1:])
    assert (m.item_tags[0] == 0).all()  # PAD row stays zero
    before = m.item_vectors(torch.arange(1, 4))
    cats = m.item_cats.clone()
    cats[1:4] = torch.tensor([[5, 2], [0, 0], [1, 1]])
    m.set_item_features(cats=cats[1:])  # items.parquet order: row i = item_idx i + 1
    assert m.item_cats[1:4].tolist() == [[5, 2], [0, 0], [1, 1]]
    assert not torch.allclose(m.item_vectors(torch.arange(1, 4)), before)
    with pytest.raises(RecstackError, match=r"tags must be \[21 or 20, 5\]"):
        m.set_item_features(tags=torch.zeros(19, 5))
    with pytest.raises(RecstackError, match="must have 5 columns"):
        m.set_item_features(tags=torch.zeros(N_ITEMS, 4))
    with pytest.raises(RecstackError, match="cats must have 2 columns"):
        m.set_item_features(cats=torch.zeros(N_ITEMS, 3, dtype=torch.long))
    with pytest.raises(RecstackError, match="integer codes"):
        m.set_item_features(cats=torch.zeros(N_ITEMS, 2))
    with pytest.raises(RecstackError, match=r"'decade' codes must be in 0..2, got 3..3"):
        m.set_item_features(cats=torch.tensor([[0, 3]] * N_ITEMS))


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_gradient_reaches_both_towers(pooling):
    m = model(pooling).train()
    history, lengths, context, user = batch()
    logits = m.score_all(history, lengths, context, user)
    F.cross_entropy(logits[:, 1:], torch.tensor([0, 5, 9, 13])).backward()
    names = ["id_emb.weight", "tag_proj.weight", "item_cat_emb.year.weight", "item_mlp.0.weight"]
    names += ["recency_emb.weight", "context_emb.hour.weight", "user_emb.age.weight"]
    names += ["user_mlp.3.weight"]
    if pooling == "attention":
        names += ["query.weight", "key.weight", "value.weight", "null_kv", "attn_out.weight"]
    params = dict(m.named_parameters())
    for name in names:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in m.parameters())


def test_state_dict_round_trip_keeps_item_features():
    m = model()
    state = m.state_dict()
    assert {"item_tags", "item_cats"} <= set(state)
    fresh = TwoTower(m.config, m.sizes).eval()
    assert (fresh.item_tags == 0).all()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.item_tags, m.item_tags)
    assert torch.equal(fresh.item_cats, m.item_cats)
    args = batch()
    assert torch.equal(fresh.score_all(*args), m.score_all(*args))


def test_user_tower_exports_with_dynamic_batch_and_length():
    m = model()
    history, lengths, context, user = batch()
    b, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=1, max=8)
    dynamic = (
        {0: b, 1: length},
        {0: b},
        {"hour": {0: b}, "device": {0: b}},
        {"gender": {0: b}, "age": {0: b}},
    )
    exported = torch.export.export(m, (history, lengths, context, user), dynamic_shapes=dynamic)
    history2 = torch.cat([history, history[:2]])[:, :3]
    lengths2 = torch.tensor([3, 1, 0, 3, 2, 1])
    context2 = {k: torch.cat([v, v[:2]]) for k, v in context.items()}
    user2 = {k: torch.cat([v, v[:2]]) for k, v in user.items()}
    torch.testing.assert_close(
        exported.module()(history2, lengths2, context2, user2),
        m(history2, lengths2, context2, user2),
    )


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_overfits_eight_users(pooling):
    # ~0.5 s each on an idle CPU
    g = torch.Generator().manual_seed(0)
    n_users = 8
    lengths = torch.randint(1, 6, (n_users,), generator=g)
    history = torch.randint(1, N_ITEMS + 1, (n_users, 5), generator=g)
    history[torch.arange(5)[None, :] >= lengths[:, None]] = 0
    targets = torch.randperm(N_ITEMS, generator=g)[:n_users] + 1  # distinct items 1..20
    context = {"hour": torch.randint(0, 25, (n_users,), generator=g)}
    m = model(pooling, dropout=0.0).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(300):
        logits = m.score_all(history, lengths, context)
        logits[:, 0] = float("-inf")
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        logits = m.score_all(history, lengths, context)
    logits[:, 0] = float("-inf")
    assert (logits.argmax(-1) == targets).float().mean().item() == 1.0  # HR@1
