"""No leakage (docs/architecture.md §5): histories and baselines use only earlier events.

Each test builds data where a leak would change the numbers, and checks it does not (plus, where
useful, that the leaky variant *would* have changed them, so the test has teeth).
"""

import numpy as np
import polars as pl
import pytest
import torch
from interaction_frames import make_frame

from recstack.datasets.splits import apply_split
from recstack.eval_set import build_eval_set, history_frame
from recstack.schema import ITEM_IDX, SPLIT, TEST, TRAIN, USER_IDX, VALID
from recstack.training.eval.baselines import EASE, Markov, MostPop
from recstack.training.eval.baselines_cmd import evaluate_baselines
from recstack.training.eval.evaluator import EvalBatch, evaluate

N_ITEMS = 30


def cuts_of(times) -> tuple[int, int]:
    """(valid_from, test_from) leaving about 20% + 20% of the events after the cuts."""
    flat = np.array([t for ts in times for t in ts])
    return int(np.quantile(flat, 0.6, method="higher")), int(
        np.quantile(flat, 0.8, method="higher")
    )


def random_log(seed=0, n_users=120, ties=False):
    """Distinct items per user (so an item identifies the user's event), some tied timestamps."""
    rng = np.random.default_rng(seed)
    successor = rng.permutation(np.arange(1, N_ITEMS + 1))
    seqs, times = [], []
    for _ in range(n_users):
        n = int(rng.integers(4, 12))
        seq = [int(rng.integers(1, N_ITEMS + 1))]
        while len(seq) < n:
            nxt = int(successor[seq[-1] - 1])
            if nxt in seq or rng.random() < 0.4:
                nxt = int(rng.choice(np.setdiff1d(np.arange(1, N_ITEMS + 1), seq)))
            seq.append(nxt)
        seqs.append(seq)
        steps = rng.integers(0 if ties else 1, 3, len(seq))
        times.append((rng.integers(0, 8) + np.cumsum(steps)).tolist())
    return seqs, times


@pytest.mark.parametrize("split", ["loo", "temporal"])
@pytest.mark.parametrize("target", ["valid", "test"])
@pytest.mark.parametrize("tie_seed", [None, 7])
def test_history_given_to_score_fn_is_strictly_before_targets(split, target, tie_seed):
    seqs, times = random_log(ties=tie_seed is not None)
    cuts = cuts_of(times)
    raw = make_frame(seqs, times, cuts=cuts)
    frame = apply_split(raw, split, tie_seed=tie_seed)
    es = build_eval_set(frame, target, N_ITEMS)
    assert es.n_users > 10
    # position of every event in the evaluated (tie-broken) time order, and its split code
    order = {
        (u, i): (pos, code)
        for pos, (u, i, code) in enumerate(
            frame.select(USER_IDX, ITEM_IDX, SPLIT).iter_rows()  # time order per user
        )
    }
    allowed = {"valid": {TRAIN}, "test": {TRAIN, VALID}}[target]
    target_code = {"valid": VALID, "test": TEST}[target]
    seen: dict[int, list[int]] = {}

    def recording_score_fn(batch: EvalBatch) -> torch.Tensor:
        for user, hist, n in zip(batch.users, batch.history, batch.lengths, strict=True):
            seen[int(user)] = hist[: int(n)].tolist()
            assert (hist[int(n) :] == 0).all()
        return torch.zeros(batch.users.shape[0], N_ITEMS + 1)

    evaluate(recording_score_fn, es, ks=(5,), batch_size=7, device="cpu")
    assert sorted(seen) == es.users.tolist()
    for r, user in enumerate(es.users.tolist()):
        targets = es.target_items[es.target_indptr[r] : es.target_indptr[r + 1]].tolist()
        first_target = min(order[(user, t)][0] for t in targets)
        assert all(order[(user, t)][1] == target_code for t in targets)
        expected = [
            i
            for (u, i), (pos, code) in sorted(order.items(), key=lambda kv: kv[1][0])
            if u == user and pos < first_target and code in allowed
        ]
        assert seen[user] == expected  # exactly the allowed events before the target, in order
        positions = [order[(user, i)][0] for i in seen[user]]
        assert positions == sorted(positions) and all(p < first_target for p in positions)
        if split == "temporal":
            cut = cuts[0] if target == "valid" else cuts[1]
            ts = dict(zip(seqs[user], times[user], strict=True))
            assert all(ts[i] < cut <= ts[t] for i in seen[user] for t in targets)


def test_most_pop_only_counts_events_before_the_target_period():
    # user 0: 1, 2 | valid 9 | test 5.  users 1-5: 3 | valid 4 | test 9 (9 is only "future")
    seqs = [[1, 2, 9, 5]] + [[3, 4, 9]] * 5
    times = [[1, 2, 3, 4]] + [[1, 2, 3]] * 5
    frame = apply_split(make_frame(seqs, times, cuts=(3, 4)), "loo")
    valid = build_eval_set(frame, "valid", 10)
    model = MostPop().fit(history_frame(frame, "valid"), 10)
    result = evaluate(model, valid, ks=(10,), device="cpu")
    # TRAIN counts: 3 -> 5, 1 -> 1, 2 -> 1 (masked for user 0); 9 has no TRAIN event:
    # user 0 ranks 3, then 0-count items by idx 4..10 -> 9 is 7th. A leak of TEST events
    # (9 counted 5 times) would put it 2nd.
    assert result.target_ranks[valid.users.tolist().index(0)] == 7
    test = build_eval_set(frame, "test", 10)
    model = MostPop().fit(history_frame(frame, "test"), 10)
    result = evaluate(model, test, ks=(10,), device="cpu")
    # users 1-5 (history 3, 4 masked): items with one TRAIN+VALID event 1, 2, 9 -> 9 is 3rd
    assert result.target_ranks[1:].tolist() == [3] * 5
    leaky = MostPop().fit(frame, 10)  # fitted on everything: 9 would be 1st
    assert evaluate(leaky, test, ks=(10,), device="cpu").target_ranks[1:].tolist() == [1] * 5


def _perturbed(frame: pl.DataFrame, codes, users, item: int) -> pl.DataFrame:
    """`frame` with the events of `users` whose split code is in `codes` moved to `item`."""
    hit = pl.col(SPLIT).is_in(list(codes)) & pl.col(USER_IDX).is_in(list(users))
    return frame.with_columns(
        pl.when(hit).then(pl.lit(item, dtype=pl.Int32)).otherwise(pl.col(ITEM_IDX)).alias(ITEM_IDX)
    )


@pytest.mark.parametrize("target", ["valid", "test"])
@pytest.mark.parametrize("model_cls", [MostPop, EASE, Markov])
def test_baselines_fit_only_on_allowed_events(target, model_cls):
    seqs, times = random_log(seed=3)
    frame = apply_split(make_frame(seqs, times, cuts=cuts_of(times)), "loo")
    a_users = set(range(0, len(seqs), 2))
    b_users = set(range(1, len(seqs), 2))
    # every later-period event of the B users becomes item 1: a leak makes item 1 look popular
    # and co-occurring with everything, which moves the A users' target ranks
    later = {"valid": (VALID, TEST), "test": (TEST,)}[target]
    changed = _perturbed(frame, later, b_users, 1)

    def a_ranks(f: pl.DataFrame, fit_frame: pl.DataFrame) -> dict[int, int]:
        es = build_eval_set(f, target, N_ITEMS)
        kwargs = {"device": "cpu", "l2": 20.0} if model_cls is EASE else {}
        model = model_cls(**kwargs).fit(fit_frame, N_ITEMS)
        ranks = evaluate(model, es, ks=(10,), device="cpu").target_ranks
        return {u: int(r) for u, r in zip(es.users, ranks, strict=True) if u in a_users}

    before = a_ranks(frame, history_frame(frame, target))
    after = a_ranks(changed, history_frame(changed, target))
    assert len(before) > 30
    assert before == after
    # teeth: fitting on all events (a leak) does change the A users' ranks
    assert a_ranks(changed, changed) != a_ranks(frame, frame)


def test_ease_lambda_is_chosen_on_validation_only():
    seqs, times = random_log(seed=5)
    frame = make_frame(seqs, times, cuts=cuts_of(times))
    grid = [1.0, 10.0, 100.0, 1000.0]

    def selection(f: pl.DataFrame):
        runs, _ = evaluate_baselines(f, N_ITEMS, ks=(10,), device="cpu", ease_lambdas=grid)
        return runs["EASE"].hyperparameters["l2"], runs["EASE"].selection["curve"]

    loo = apply_split(frame, "loo")
    users = set(range(len(seqs)))
    changed_test = _perturbed(loo, (TEST,), users, 2).drop(SPLIT)
    changed_valid = _perturbed(loo, (VALID,), users, 2).drop(SPLIT)
    base = selection(frame)
    assert base[0] in grid and list(base[1]) == grid
    assert selection(changed_test) == base  # test events never influence the choice
    assert selection(changed_valid)[1] != base[1]  # validation events do
