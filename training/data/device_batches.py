"""Training batches built on the training device (docs/architecture.md §6).

When the event arrays fit in the accelerator's memory, `DeviceBatches` copies them there once
and builds every batch there, with the same gathers as the DataLoader path of `samples.py`: no
worker processes and no host-to-device copy per step. The epoch's sample order still comes from
`EpochSampler`, so the batches are the DataLoader path's, in the same order. The order (and,
with tie shuffling, the epoch's item order) is copied once per epoch; each batch's width is
known on the host, so building a batch needs no host sync.

With `buckets` (on CUDA), a batch is right-padded to the smallest of four widths (the full
window and its 1/2, 1/4 and 1/8) that holds it, so a compiled model or a CUDA graph sees a few
shapes, not one per batch. Extra right padding changes nothing the models compute: SASRec's
attention is causal and its PAD targets weigh 0, and the two-tower masks its history by length.

One process only: under DDP the DataLoader path shards the samples (`device_batches: auto`
picks it there).
"""

import math

import numpy as np
import torch

from recstack.schema import PAD_IDX
from recstack.training.data.samples import EpochSampler, EventSamples, WindowSamples


def _on(device: torch.device, array) -> torch.Tensor:
    """A host array as an int64 tensor on `device` (one copy)."""
    return torch.as_tensor(np.asarray(array, dtype=np.int64), device=device)


def _gather(flat: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, width: int):
    """[B, width] rows flat[starts[i] : starts[i] + lengths[i]], right-padded with PAD."""
    offsets = torch.arange(width, device=flat.device)
    index = starts[:, None] + offsets[None, :]
    valid = offsets[None, :] < lengths[:, None]
    return torch.where(valid, flat[torch.where(valid, index, 0)], PAD_IDX)


class DeviceBatches:
    """The batches of `samples` in `sampler`'s order, built on `device`. Lightning calls
    `sampler.set_epoch` before each epoch, as it does for a DataLoader."""

    def __init__(
        self,
        samples: WindowSamples | EventSamples,
        sampler: EpochSampler,
        batch_size: int,
        device: torch.device,
        buckets: bool = False,
    ) -> None:
        self.samples, self.sampler, self.batch_size = samples, sampler, batch_size
        self.device = torch.device(device)
        self.windows = isinstance(samples, WindowSamples)
        full = samples.history_len + 1 if self.windows else samples.history_len
        self.buckets = np.unique([math.ceil(full / 2**k) for k in range(4)]) if buckets else None
        if self.windows:
            self.starts, self.lengths = _on(device, samples.starts), _on(device, samples.lengths)
            self.widths = samples.lengths  # host: the batch width is the longest window
        else:
            self.events = _on(device, samples.events)
            self.lengths = _on(device, samples.history_lengths)
            self.user_of = _on(device, samples.user_of)
            self.context = _on(device, samples.arrays.context)
            self.user_codes = _on(device, samples.user_codes)
            self.widths = samples.history_lengths  # host: the batch width is the longest history
        self.items = None if samples.order is not None else _on(device, samples.arrays.items)

    @staticmethod
    def nbytes(samples: WindowSamples | EventSamples) -> int:
        """What the device copies take, all int64: the items, and per window its start and
        length, or per event its context and user, per sample its event and history length,
        and the user attribute table."""
        n_events, n = samples.arrays.n_events, len(samples)
        if isinstance(samples, WindowSamples):
            return 8 * (n_events + 2 * n)
        per_event = 2 + samples.arrays.context.shape[1]
        return 8 * (n_events * per_event + 2 * n + samples.user_codes.size)

    def __len__(self) -> int:
        return math.ceil(len(self.samples) / self.batch_size)

    def __iter__(self):
        epoch = self.sampler.epoch
        order = self.sampler.order()  # host, [n]: the DataLoader path's order for this epoch
        items = self.items
        if items is None:  # this epoch's tie-shuffled item order
            items = _on(self.device, self.samples.order.items(epoch))
        cuts = np.arange(0, order.shape[0], self.batch_size)
        widths = np.maximum.reduceat(self.widths[order], cuts) if order.size else np.zeros(0)
        if self.buckets is not None:  # the smallest bucket that holds the batch
            widths = self.buckets[np.searchsorted(self.buckets, widths)]
        on_device = _on(self.device, order)
        for start, width in zip(cuts.tolist(), widths.tolist(), strict=True):
            idx = on_device[start : start + self.batch_size]
            if self.windows:
                yield self._windows(items, idx, max(int(width), 1))
            else:
                yield self._events(items, idx, max(int(width), 1))

    def _windows(self, items: torch.Tensor, idx: torch.Tensor, width: int) -> dict:
        seq = _gather(items, self.starts[idx], self.lengths[idx], width)  # [B, L + 1]
        return {"items": seq[:, :-1], "targets": seq[:, 1:]}

    def _events(self, items: torch.Tensor, idx: torch.Tensor, width: int) -> dict:
        event, lengths = self.events[idx], self.lengths[idx]
        user = self.user_of[event]
        return {
            "history": _gather(items, event - lengths, lengths, width),
            "lengths": lengths,
            "targets": items[event],
            "context": self.context[event],
            "user": self.user_codes[user],
            "users": user,
        }
