"""One conformance suite every model passes: shapes, padding invariance,
causality, determinism. Overfitting a tiny dataset is in tests/training/test_train_cli.py."""

import pytest
import torch

from recstack.schema import PAD_IDX
from recstack.training.models.sasrec import SASRec, SASRecConfig
from recstack.training.models.two_tower import FeatureSizes, TwoTower, TwoTowerConfig

N_ITEMS = 40
HISTORY_LEN = 16


def _sasrec():
    return SASRec(
        SASRecConfig(n_items=N_ITEMS, history_len=HISTORY_LEN, dim=16, n_heads=2, dropout=0.1)
    )


def _two_tower():
    sizes = FeatureSizes(n_items=N_ITEMS, context={"hour": 25}, user={"gender": 3}, item_tags=4)
    return TwoTower(TwoTowerConfig(dim=16, history_len=HISTORY_LEN, n_heads=2, dropout=0.1), sizes)


def _sasrec_cosine():
    config = SASRecConfig(
        n_items=N_ITEMS, history_len=HISTORY_LEN, dim=16, n_heads=2, dropout=0.1,
        similarity="cosine", temperature=0.05,
    )  # fmt: skip
    return SASRec(config)


MODELS = {"sasrec": _sasrec, "sasrec_cosine": _sasrec_cosine, "two_tower": _two_tower}


def _score(model, history, lengths):
    if isinstance(model, TwoTower):
        context = {"hour": torch.full_like(lengths, 3)}
        return model.score_all(history, lengths, context, {"gender": torch.ones_like(lengths)})
    return model.score_all(history, lengths)


def _inputs(batch=4, length=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    history = torch.randint(1, N_ITEMS + 1, (batch, length), generator=generator)
    lengths = torch.tensor([length, 1, length // 2, 3][:batch])
    positions = torch.arange(length)[None, :]
    return history.masked_fill(positions >= lengths[:, None], PAD_IDX), lengths


@pytest.fixture(params=list(MODELS))
def model(request):
    torch.manual_seed(0)
    return MODELS[request.param]().eval()


def test_output_shapes(model):
    history, lengths = _inputs()
    assert _score(model, history, lengths).shape == (4, N_ITEMS + 1)
    if isinstance(model, SASRec):
        assert model(history).shape == (4, 10, 16)


def test_extra_padding_changes_nothing(model):
    history, lengths = _inputs()
    padded = torch.cat([history, torch.zeros(4, 5, dtype=history.dtype)], dim=1)
    torch.testing.assert_close(_score(model, history, lengths), _score(model, padded, lengths))


def test_later_items_cannot_change_the_prediction(model):
    """Causality: whatever sits after a user's last real item (a later event, garbage) is unseen."""
    history, lengths = _inputs()
    later = history.clone()
    positions = torch.arange(history.shape[1])[None, :]
    later[positions >= lengths[:, None]] = 7
    torch.testing.assert_close(_score(model, history, lengths), _score(model, later, lengths))


def test_sasrec_positions_only_see_the_past():
    torch.manual_seed(0)
    model = _sasrec().eval()
    history, _ = _inputs(length=12)
    changed = history.clone()
    changed[:, 6:] = (changed[:, 6:] % N_ITEMS) + 1
    out, out_changed = model(history), model(changed)
    torch.testing.assert_close(out[:, :6], out_changed[:, :6])
    assert not torch.allclose(out[:, 6:], out_changed[:, 6:])


@pytest.mark.parametrize("name", list(MODELS))
def test_same_seed_same_model_and_scores(name):
    history, lengths = _inputs()
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = MODELS[name]()
        model.train()  # dropout on: the seed must fix it too
        torch.manual_seed(5)
        outputs.append(_score(model, history, lengths))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_bad_configs_are_refused():
    from recstack.errors import RecstackError

    for bad in (
        {"dim": -4}, {"dim": 10, "n_heads": 3}, {"dropout": 1.5}, {"history_len": 0},
        {"similarity": "euclid"}, {"temperature": 0.0}, {"temperature": float("nan")},
    ):  # fmt: skip
        with pytest.raises(RecstackError):
            SASRecConfig(n_items=5, **bad)


def test_sasrec_scores_with_its_own_output_table_when_untied():
    torch.manual_seed(0)
    net = SASRec(SASRecConfig(n_items=N_ITEMS, history_len=HISTORY_LEN, dim=16, tie_output=False))
    net.eval()  # no dropout
    items, lengths = torch.tensor([[1, 2, 3]]), torch.tensor([3])
    assert net.output_table is not net.item_emb
    expected = net.last_hidden(items, lengths) @ net.out_emb.weight.T
    assert torch.allclose(net.score_all(items, lengths), expected)
    assert torch.equal(net.item_vectors(torch.tensor([2])), net.out_emb.weight[2:3])
    tied = SASRec(SASRecConfig(n_items=N_ITEMS, history_len=HISTORY_LEN, dim=16))
    assert tied.output_table is tied.item_emb and tied.out_emb is None


def test_sasrec_cosine_scores_are_cosines_of_normalised_states_and_item_vectors():
    net = _sasrec_cosine().eval()
    items, lengths = _inputs()
    state = net.last_hidden(items, lengths)
    table = net.output_table.weight
    torch.testing.assert_close(state.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(net.all_item_vectors()[1:].norm(dim=-1), torch.ones(N_ITEMS))
    expected = state @ torch.nn.functional.normalize(table, dim=-1).T
    torch.testing.assert_close(net.score_all(items, lengths), expected)
    assert net.score_all(items, lengths).abs().max() <= 1.0 + 1e-5  # cosines, not logits
    dot = _sasrec().eval()  # the default is the plain dot product with the raw table
    assert dot.config.similarity == "dot" and dot.config.temperature == 1.0
    torch.testing.assert_close(
        dot.score_all(items, lengths), dot.last_hidden(items, lengths) @ dot.item_emb.weight.T
    )
