"""Training samples: windows cover every transition once, histories never leak, shuffles are
seeded per epoch, and workers get the memory map, not a copy."""

import pickle

import numpy as np
import polars as pl

from recstack.schema import ITEM_IDX, PAD_IDX, TS, USER_IDX
from recstack.training.data.event_arrays import EventArrays, write_event_arrays
from recstack.training.data.samples import (
    EpochSampler,
    EventSamples,
    TieShuffle,
    WindowSamples,
    user_windows,
)


def _arrays(tmp_path, sequences: list[list[int]], ts: list[int] | None = None) -> EventArrays:
    users = [u for u, seq in enumerate(sequences) for _ in seq]
    items = [i for seq in sequences for i in seq]
    ts = list(range(len(items))) if ts is None else ts
    frame = pl.DataFrame({USER_IDX: users, ITEM_IDX: items, TS: ts})
    context = np.zeros((len(items), 2), dtype=np.int64)
    return EventArrays.open(write_event_arrays(frame, context, len(sequences), tmp_path / "a"))


def test_windows_cover_every_transition_exactly_once(tmp_path):
    sequences = [list(range(1, n + 1)) for n in (1, 2, 5, 9, 17)]
    arrays = _arrays(tmp_path, [[100 * u + i for i in s] for u, s in enumerate(sequences)])
    dataset = WindowSamples(arrays, history_len=4)
    batch = dataset.__getitems__(list(range(len(dataset))))
    pairs = {
        (int(a), int(b))
        for row_in, row_out in zip(batch["items"], batch["targets"], strict=True)
        for a, b in zip(row_in, row_out, strict=True)
        if b != PAD_IDX
    }
    expected = {(s[i], s[i + 1]) for s in arrays_seqs(sequences) for i in range(len(s) - 1)}
    assert pairs == expected
    n_targets = int((batch["targets"] != PAD_IDX).sum())
    assert n_targets == sum(len(s) - 1 for s in sequences)  # none twice
    assert batch["items"].shape[1] <= 4


def arrays_seqs(sequences):
    return [[100 * u + i for i in s] for u, s in enumerate(sequences)]


def test_user_windows_of_short_users():
    starts, lengths = user_windows(np.array([0, 1, 3, 3]), history_len=5)
    assert starts.tolist() == [1] and lengths.tolist() == [2]  # one-event users give no window


def test_event_histories_hold_only_earlier_events(tmp_path):
    sequences = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    arrays = _arrays(tmp_path, sequences)
    dataset = EventSamples(arrays, np.zeros((2, 0), dtype=np.int64), history_len=3)
    batch = dataset.__getitems__(list(range(len(dataset))))
    for history, length, target, user in zip(
        batch["history"], batch["lengths"], batch["targets"], batch["users"], strict=True
    ):
        seq = sequences[int(user)]
        position = seq.index(int(target))
        assert history[: int(length)].tolist() == seq[max(0, position - 3) : position]
        assert (history[int(length) :] == PAD_IDX).all()
    assert len(dataset) == 5 + 2  # the first event of each user has no history


def test_epoch_sampler_is_seeded_per_epoch_and_groups_lengths():
    lengths = np.random.default_rng(0).integers(1, 200, size=1000)
    sampler = EpochSampler(1000, seed=3, lengths=lengths, batch_size=50)
    sampler.set_epoch(1)
    first = list(sampler)
    assert sorted(first) == list(range(1000, 2000))  # epoch * n + i
    assert list(sampler) == first
    sampler.set_epoch(2)
    assert [i - 1000 for i in list(sampler)] != first
    batches = (np.array(first) - 1000).reshape(20, 50)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.5 * np.ptp(lengths)  # far less padding than random batches


def test_workers_receive_the_path_not_the_arrays(tmp_path):
    arrays = _arrays(tmp_path, [list(range(1, 5000))])
    assert arrays.items.shape == (4999,)
    assert len(pickle.dumps(arrays)) < 1000
    assert isinstance(pickle.loads(pickle.dumps(arrays)).items, np.memmap)


def test_tie_shuffle_reorders_only_events_with_equal_timestamps(tmp_path):
    sequences = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]
    ts = [10, 20, 20, 20, 30, 30, 30, 30, 40]  # user 1 starts at ts 30 too: ties never cross users
    arrays = _arrays(tmp_path, sequences, ts)
    shuffle = TieShuffle(arrays, seed=0)
    seen = set()
    for epoch in range(30):
        items = shuffle.items(epoch).tolist()
        assert items[0] == 1 and items[8] == 9  # untied events stay in place
        assert sorted(items[1:4]) == [2, 3, 4] and sorted(items[4:6]) == [5, 6]
        assert sorted(items[6:8]) == [7, 8]
        seen.add(tuple(items))
    assert len(seen) > 5
    assert shuffle.items(3).tolist() == TieShuffle(arrays, seed=0).items(3).tolist()
