"""Batches built on the training device (training/data/device_batches.py) are the DataLoader
path's batches, in the same order, epoch after epoch; `data.device_batches` picks the path."""

import json

import pytest
import torch
from train_configs import RETRIEVAL, SASREC, write_config

from recstack.cli import main
from recstack.errors import DataError
from recstack.training.data.datamodule import RecDataModule
from recstack.training.data.device_batches import DeviceBatches
from recstack.training.data.facts import TrainSamples


def _module(chain_dir, tmp_path, mode: str) -> RecDataModule:
    data = RecDataModule(chain_dir, batch_size=7, cache_dir=tmp_path, shuffle_ties=True,
                         device_batches=mode)  # fmt: skip
    data.prepare_data()
    data.setup("fit")
    return data


@pytest.mark.parametrize("samples", [TrainSamples("windows", 5), TrainSamples("events", 4)])
def test_device_batches_are_the_dataloaders_batches(chain_dir, tmp_path, samples):
    loaders = {}
    for mode in ("off", "on"):
        data = _module(chain_dir, tmp_path, mode)
        data.train_on(samples)
        loaders[mode] = data.train_dataloader()
    assert isinstance(loaders["on"], DeviceBatches) and len(loaders["on"]) == len(loaders["off"])
    for epoch in (0, 1):  # a new order (and new tie order) each epoch, the same on both paths
        for loader in loaders.values():
            loader.sampler.set_epoch(epoch)
        pairs = list(zip(loaders["off"], loaders["on"], strict=True))
        for expected, got in pairs:
            assert expected.keys() == got.keys()
            for key in expected:
                assert got[key].dtype == expected[key].dtype == torch.int64, key
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_auto_uses_the_dataloader_off_the_gpu_and_on_is_refused_under_ddp(chain_dir, tmp_path):
    data = _module(chain_dir, tmp_path, "auto")
    data.train_on(TrainSamples("windows", 5))
    assert not isinstance(data.train_dataloader(), DeviceBatches)
    assert data.batches_from == "a DataLoader over memory maps (data.device_batches auto on cpu)"
    on = _module(chain_dir, tmp_path, "on")
    with pytest.raises(DataError, match="under DDP"):
        on._device_batches(None, torch.device("cpu"), world=2)
    with pytest.raises(DataError, match="use auto, on or off"):
        RecDataModule(chain_dir, device_batches="gpu")


@pytest.mark.parametrize("task", [SASREC, RETRIEVAL], ids=["sasrec", "two_tower"])
def test_training_on_device_batches_learns_and_says_so(tmp_path, chain_dir, task):
    config = write_config(tmp_path, chain_dir, task)
    stop_when_fitted = ["--early_stopping.stopping_threshold", "0.99"]  # val NDCG@10
    assert main(["train", "--config", str(config), "--data.device_batches", "on",
                 *stop_when_fitted]) == 0  # fmt: skip
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["test"]["hr@10"] >= 0.95, report["test"]
    assert report["train_batches"] == "built on cpu (data.device_batches on)"


@pytest.mark.parametrize("samples", [TrainSamples("windows", 9), TrainSamples("events", 9)])
def test_buckets_pad_each_batch_to_one_of_four_widths_and_nothing_else(
    chain_dir, tmp_path, samples
):
    data = _module(chain_dir, tmp_path, "off")
    data.train_on(samples)
    loader = data.train_dataloader()
    dataset = loader.dataset
    bucketed = DeviceBatches(dataset, loader.sampler, 7, torch.device("cpu"), buckets=True)
    full = samples.length + 1 if samples.kind == "windows" else samples.length
    allowed = {full, -(-full // 2), -(-full // 4), -(-full // 8)}
    seen = set()
    for expected, got in zip(loader, bucketed, strict=True):
        for key, value in expected.items():
            if value.dim() == 2 and key in ("items", "targets", "history"):
                width = got[key].shape[1] + (1 if key in ("items", "targets") else 0)
                assert width in allowed, (key, width)
                seen.add(width)
                assert (got[key][:, value.shape[1] :] == 0).all()  # only PAD was added
                value = torch.nn.functional.pad(value, (0, got[key].shape[1] - value.shape[1]))
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    assert len(seen) >= 1


@pytest.mark.parametrize("samples", [TrainSamples("windows", 5), TrainSamples("events", 4)])
def test_nbytes_counts_what_goes_to_the_device(chain_dir, tmp_path, samples):
    data = _module(chain_dir, tmp_path, "on")
    data.train_on(samples)
    batches = data.train_dataloader()
    on_device = sum(v.nbytes for v in vars(batches).values() if isinstance(v, torch.Tensor))
    assert batches.items is None  # tie shuffling: each epoch's item order is copied per epoch
    epoch_items = 8 * batches.samples.arrays.n_events
    assert DeviceBatches.nbytes(batches.samples) == on_device + epoch_items
