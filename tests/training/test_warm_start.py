"""Warm start (training/warm_start.py): known rows copied, appended item rows fresh, any other
difference refused in one line."""

import pytest
import torch

from recstack.errors import RecstackError
from recstack.training.models.sasrec import SASRec, SASRecConfig
from recstack.training.warm_start import copy_weights


def net(n_items: int, dim: int = 16) -> SASRec:
    torch.manual_seed(n_items)
    return SASRec(SASRecConfig(n_items=n_items, history_len=8, dim=dim, n_layers=1, n_heads=1))


def test_known_rows_are_copied_and_new_item_rows_keep_their_fresh_init():
    old, new = net(10), net(13)
    fresh = new.item_emb.weight.detach().clone()
    report = copy_weights(new, dict(old.named_parameters()), "old.ckpt")
    assert report["grown"] == {"item_emb.weight": 3}
    assert torch.equal(new.item_emb.weight[:11], old.item_emb.weight)
    assert torch.equal(new.item_emb.weight[11:], fresh[11:])
    assert torch.equal(new.pos_emb.weight, old.pos_emb.weight)


def test_a_smaller_catalogue_or_another_width_is_refused():
    with pytest.raises(RecstackError, match="only tables that grew"):
        copy_weights(net(8), dict(net(10).named_parameters()), "old.ckpt")
    with pytest.raises(RecstackError, match="train from scratch"):
        copy_weights(net(10, dim=8), dict(net(10).named_parameters()), "old.ckpt")
    weights = dict(net(10).named_parameters())
    weights.pop("pos_emb.weight")
    with pytest.raises(RecstackError, match="another architecture"):
        copy_weights(net(10), weights, "old.ckpt")
