"""Eval sets, the full-ranking evaluator and segments (training/eval/)."""

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from interaction_frames import make_frame

from recstack.datasets.splits import apply_split
from recstack.errors import DataError, RecstackError
from recstack.eval_set import build_eval_set, history_frame
from recstack.ranking_metrics import UNRANKED
from recstack.schema import AGE, GENDER, ITEM_IDX, PAD_IDX, SPLIT, TEST, TRAIN, USER_IDX, ZIP
from recstack.segments import segment_metrics, segments_to_dict
from recstack.training.eval.evaluator import EvalBatch, evaluate, make_batch

ACCURACY = ("hr", "recall", "ndcg", "mrr")


def table_score_fn(table: torch.Tensor):
    """Scores looked up by user_idx (not by batch position)."""

    def score_fn(batch: EvalBatch) -> torch.Tensor:
        return table.to(batch.users.device)[batch.users]

    return score_fn


# ---------------------------------------------------------------- eval sets


def test_loo_eval_sets():
    frame = apply_split(make_frame([[1, 2, 3, 4], [5, 6, 7], [8, 9]]), "loo")
    valid = build_eval_set(frame, "valid", n_items=9)
    assert valid.users.tolist() == [0, 1]  # user 2 (two events) has no validation target
    assert valid.history_items.tolist() == [1, 2, 5]
    assert valid.history_indptr.tolist() == [0, 2, 3]
    assert valid.target_items.tolist() == [3, 6]
    test = build_eval_set(frame, "test", n_items=9)
    assert test.users.tolist() == [0, 1, 2]
    assert test.history_items.tolist() == [1, 2, 3, 5, 6, 8]
    assert test.target_items.tolist() == [4, 7, 9]
    assert test.target_counts.tolist() == [1, 1, 1]
    # popularity: distinct users per item among all history events
    assert test.item_popularity.tolist() == [0, 1, 1, 1, 0, 1, 1, 0, 1, 0]
    assert test.n_history_users == 3


def test_temporal_eval_set_has_several_targets_dedupes_and_drops_seen():
    times = [[1, 2, 5, 6, 7, 8], [1, 6, 7], [7, 8]]
    seqs = [[1, 2, 3, 4, 4, 1], [5, 6, 2], [3, 4]]
    frame = apply_split(make_frame(seqs, times, cuts=(5, 7)), "temporal")
    test = build_eval_set(frame, "test", n_items=6)
    # user 0: history 1,2,3,4 (ts < 7); test events 4 (seen), 1 (seen) -> no target left
    # user 1: history 5, 6; target 2.  user 2: no history -> dropped (min_history=1)
    assert test.users.tolist() == [1]
    assert test.target_items.tolist() == [2]
    assert test.n_targets_dropped_seen == 2
    assert test.n_users_dropped_no_history == 1
    cold = build_eval_set(frame, "test", n_items=6, min_history=0)
    assert cold.users.tolist() == [1, 2]
    assert cold.target_items.tolist() == [2, 3, 4]  # user 2: two targets, in time order
    assert cold.history_lengths.tolist() == [2, 0]
    kept = build_eval_set(frame, "test", n_items=6, drop_seen_targets=False)
    assert kept.users.tolist() == [0, 1]
    assert kept.target_items.tolist() == [4, 1, 2]
    table = torch.zeros(3, 7)
    table[0, 1] = table[0, 4] = 1.0  # seen targets: masked, so misses whatever their score
    result = evaluate(table_score_fn(table), kept, ks=(1, 10), device="cpu")
    assert result.target_ranks.tolist()[:2] == [UNRANKED, UNRANKED]
    assert result.per_user["hr@10"].tolist() == [0.0, 1.0]
    valid = build_eval_set(frame, "valid", n_items=6)
    assert valid.users.tolist() == [0, 1]
    assert valid.target_items.tolist() == [3, 4, 6]  # user 0: 3, 4 (4 repeated once)
    assert valid.history_items.tolist() == [1, 2, 5]


def test_eval_set_refuses_bad_input():
    frame = make_frame([[1, 2, 3]])
    with pytest.raises(DataError, match="apply_split"):
        build_eval_set(frame, "test", n_items=3)
    with pytest.raises(DataError, match="unknown evaluation target"):
        build_eval_set(apply_split(frame, "loo"), "train", n_items=3)
    with pytest.raises(DataError, match=r"1\.\.2"):
        build_eval_set(apply_split(frame, "loo"), "test", n_items=2)
    bad = frame.with_columns(pl.Series(SPLIT, [TRAIN, TEST, TRAIN], dtype=pl.Int8))
    with pytest.raises(DataError, match="history events after"):
        build_eval_set(bad, "test", n_items=3)


def test_history_frame_keeps_allowed_events_in_time_order():
    frame = apply_split(make_frame([[1, 2, 3, 4], [5, 6, 7]]), "loo")
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=1)
    assert history_frame(shuffled, "valid")[ITEM_IDX].to_list() == [1, 2, 5]
    assert history_frame(shuffled, "test")[ITEM_IDX].to_list() == [1, 2, 3, 5, 6]


def test_make_batch_right_pads_in_time_order():
    frame = apply_split(make_frame([[1, 2, 3, 4], [5, 6], [7, 8, 9]]), "loo")
    es = build_eval_set(frame, "test", n_items=9)
    batch = make_batch(es, 0, 3, torch.device("cpu"))
    assert batch.users.tolist() == [0, 1, 2]
    assert batch.lengths.tolist() == [3, 1, 2]
    assert batch.history.tolist() == [[1, 2, 3], [5, PAD_IDX, PAD_IDX], [7, 8, PAD_IDX]]
    assert batch.history.dtype == torch.long


def test_batch_recent_keeps_the_last_events_right_padded():
    batch = EvalBatch(
        users=torch.arange(3),
        history=torch.tensor([[1, 2, 3, 4], [5, 0, 0, 0], [6, 7, 8, 0]]),
        lengths=torch.tensor([4, 1, 3]),
    )
    recent, lengths = batch.recent(2)
    assert recent.tolist() == [[3, 4], [5, 0], [7, 8]]
    assert lengths.tolist() == [2, 1, 2]
    same, _ = batch.recent(10)
    assert torch.equal(same, batch.history)


# ---------------------------------------------------------------- evaluator


def test_bad_scores_are_refused():
    es = build_eval_set(apply_split(make_frame([[1, 2, 3]]), "loo"), "test", n_items=3)
    with pytest.raises(RecstackError, match="shape"):
        evaluate(lambda b: torch.zeros(1, 3), es, device="cpu")
    with pytest.raises(RecstackError, match="NaN"):
        evaluate(lambda b: torch.full((1, 4), float("nan")), es, device="cpu")


def test_sampled_metrics_are_named_and_never_default():
    seqs = [[1 + (u + j) % 40 for j in range(6)] for u in range(30)]
    es = build_eval_set(apply_split(make_frame(seqs), "loo"), "test", n_items=40)
    table = torch.randn(30, 41, generator=torch.Generator().manual_seed(0))
    default = evaluate(table_score_fn(table), es, device="cpu")
    assert not any("sampled" in k for k in default.metrics)
    assert not any("sampled" in k for k in default.per_user)
    result = evaluate(table_score_fn(table), es, device="cpu", sampled=5, seed=3)
    for m in ACCURACY:
        for k in (10, 20):
            assert f"{m}@{k}_sampled5" in result.metrics
    # 5 negatives + 1 target: the target is always within the top 10
    assert result.metrics["hr@10_sampled5"] == result.metrics["recall@10_sampled5"] == 1.0
    assert result.metrics["mrr@10_sampled5"] >= 1 / 6
    for k, v in default.metrics.items():
        assert result.metrics[k] == v  # the full-ranking numbers do not change
    again = evaluate(table_score_fn(table), es, device="cpu", sampled=5, seed=3)
    assert again.metrics == result.metrics
    other = evaluate(table_score_fn(table), es, device="cpu", sampled=5, seed=4)
    assert other.metrics["mrr@10_sampled5"] != result.metrics["mrr@10_sampled5"]


def test_accuracy_only_evaluation_skips_beyond_accuracy():
    seqs = [[1 + (u + j) % 40 for j in range(6)] for u in range(30)]
    es = build_eval_set(apply_split(make_frame(seqs), "loo"), "test", n_items=40)
    table = torch.randn(30, 41, generator=torch.Generator().manual_seed(0))
    full = evaluate(table_score_fn(table), es, device="cpu")
    fast = evaluate(table_score_fn(table), es, device="cpu", beyond=False)
    assert "coverage@10" in full.metrics and "coverage@10" not in fast.metrics
    assert fast.metrics == {k: v for k, v in full.metrics.items() if k in fast.metrics}


def test_eval_set_slices_are_shards_of_the_whole():
    seqs = [[1 + (u + j) % 40 for j in range(3 + u % 5)] for u in range(30)]
    es = build_eval_set(apply_split(make_frame(seqs), "loo"), "test", n_items=40)
    table = torch.randn(30, 41, generator=torch.Generator().manual_seed(1))
    whole = evaluate(table_score_fn(table), es, device="cpu", beyond=False)
    parts = [
        evaluate(table_score_fn(table), es.slice(a, b), device="cpu", beyond=False)
        for a, b in ((0, 11), (11, 30))
    ]
    for name, values in whole.per_user.items():
        np.testing.assert_array_equal(np.concatenate([p.per_user[name] for p in parts]), values)


def test_shuffle_ties_permutes_only_equal_timestamps():
    # user 0: ts 1, 2, 2, 2, 3 (then valid, test); user 1: 5, 5 (then valid, test)
    frame = make_frame(
        [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11]], times=[[1, 2, 2, 2, 3, 4, 5], [5, 5, 6, 7]]
    )
    es = build_eval_set(apply_split(frame, "loo"), "test", n_items=11)
    batch = make_batch(es, 0, 2, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        shuffled = batch.shuffle_ties(generator)
        rows = shuffled.history.tolist()
        assert rows[0][0] == 1 and sorted(rows[0][1:4]) == [2, 3, 4] and rows[0][4:] == [5, 6]
        assert sorted(rows[1][:2]) == [8, 9] and rows[1][2:] == [10, 0, 0, 0]
        assert torch.equal(shuffled.lengths, batch.lengths)
        seen.add(tuple(rows[0][1:4]))
    assert len(seen) == 6  # every order of the three tied events occurs


def test_sampled_negatives_are_unseen():
    from recstack.training.eval.evaluator import sample_negatives

    seqs = [[1, 2, 3, 4, 5, 6, 7], [2, 4, 6, 8]]
    es = build_eval_set(apply_split(make_frame(seqs), "loo"), "test", n_items=9)
    neg = sample_negatives(es, 200, seed=0)
    assert set(neg[0].tolist()) == {8, 9}
    assert set(neg[1].tolist()) == {1, 3, 5, 7, 9}


@st.composite
def logs(draw):
    n_items = draw(st.integers(3, 30))
    n_users = draw(st.integers(1, 8))
    seqs = [
        draw(st.lists(st.integers(1, n_items), min_size=2, max_size=12)) for _ in range(n_users)
    ]
    times = [
        sorted(draw(st.lists(st.integers(0, 50), min_size=len(s), max_size=len(s)))) for s in seqs
    ]
    split = draw(st.sampled_from(["loo", "temporal"]))
    target = draw(st.sampled_from(["valid", "test"]))
    seed = draw(st.integers(0, 2**16))
    return n_items, seqs, times, split, target, seed


def _setup(n_items, seqs, times, split, target, seed):
    frame = apply_split(make_frame(seqs, times, cuts=(20, 30)), split)
    es = build_eval_set(frame, target, n_items)
    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(0, 3, (len(seqs), n_items + 1), generator=gen).float()  # many ties
    return frame, es, table


@settings(max_examples=40, deadline=None)
@given(logs(), st.sampled_from([1, 3, 5]))
def test_properties(log, k):
    n_items = log[0]
    _, es, table = _setup(*log)
    if es.n_users == 0:
        return
    result = evaluate(table_score_fn(table), es, ks=(k, 10), device="cpu")
    # seen items (and PAD) never recommended
    for u in range(es.n_users):
        seen = set(es.history_items[es.history_indptr[u] : es.history_indptr[u + 1]].tolist())
        top = [i for i in result.top_items[u].tolist() if i != PAD_IDX]
        assert not seen & set(top)
        assert len(top) == len(set(top)) == min(10, n_items + 1, n_items - len(seen))
    # metrics in [0, 1]
    for name, values in result.per_user.items():
        if name.split("@")[0] in ACCURACY:
            assert ((values >= 0) & (values <= 1 + 1e-12)).all(), name
    for name in (f"coverage@{k}", "coverage@10"):
        assert 0 <= result.metrics[name] <= 1
    # batch size does not matter
    for batch_size in (1, 2):
        other = evaluate(table_score_fn(table), es, ks=(k, 10), batch_size=batch_size)
        assert other.metrics == pytest.approx(result.metrics, nan_ok=True)
        np.testing.assert_array_equal(other.target_ranks, result.target_ranks)
    # the target is in the top-k list exactly when its rank is <= k
    row = np.repeat(np.arange(es.n_users), es.target_counts)
    for t, (r, item) in enumerate(zip(row, es.target_items, strict=True)):
        assert (item in result.top_items[r, :k]) == (result.target_ranks[t] <= k)


@settings(max_examples=30, deadline=None)
@given(logs())
def test_perfect_scorer_scores_one(log):
    n_items, seqs, *_ = log
    _, es, _ = _setup(*log)
    if es.n_users == 0:
        return
    table = torch.zeros(len(seqs), n_items + 1)
    row = np.repeat(es.users, es.target_counts)
    table[torch.from_numpy(row), torch.from_numpy(es.target_items)] = 1.0
    k = 10  # >= any number of targets here
    result = evaluate(table_score_fn(table), es, ks=(k,), device="cpu")
    for m in ACCURACY:
        assert result.metrics[f"{m}@{k}"] == pytest.approx(1.0)


@settings(max_examples=30, deadline=None)
@given(logs(), st.randoms(use_true_random=False))
def test_invariant_to_permuting_users(log, rnd):
    n_items, seqs, times, split, target, seed = log
    _, es, table = _setup(*log)
    if es.n_users == 0:
        return
    perm = list(range(len(seqs)))
    rnd.shuffle(perm)  # old user u becomes perm[u]
    inverse = np.argsort(perm)
    seqs2 = [seqs[i] for i in inverse]
    times2 = [times[i] for i in inverse]
    _, es2, _ = _setup(n_items, seqs2, times2, split, target, seed)
    table2 = table[torch.from_numpy(inverse)]
    a = evaluate(table_score_fn(table), es, ks=(1, 5), device="cpu")
    b = evaluate(table_score_fn(table2), es2, ks=(1, 5), device="cpu")
    assert a.metrics == pytest.approx(b.metrics, nan_ok=True)
    new_ids = np.asarray(perm)[a.users]
    order = np.searchsorted(b.users, new_ids)
    for name, values in a.per_user.items():
        np.testing.assert_allclose(values, b.per_user[name][order], equal_nan=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(0)
    seqs = [
        rng.choice(np.arange(1, 301), rng.integers(2, 40), replace=False).tolist()
        for _ in range(500)
    ]
    times = [sorted(rng.integers(0, 1000, len(s)).tolist()) for s in seqs]
    frame = apply_split(make_frame(seqs, times, cuts=(700, 850)), "temporal")
    es = build_eval_set(frame, "test", n_items=300)
    table = torch.randint(0, 20, (500, 301), generator=torch.Generator().manual_seed(0)).float()
    cpu = evaluate(table_score_fn(table), es, device="cpu", sampled=50, batch_size=64)
    gpu = evaluate(table_score_fn(table), es, device="cuda", sampled=50, batch_size=64)
    assert gpu.info["device"].startswith("cuda")
    np.testing.assert_array_equal(cpu.target_ranks, gpu.target_ranks)
    np.testing.assert_array_equal(cpu.top_items, gpu.top_items)
    assert cpu.metrics == pytest.approx(gpu.metrics)


# ---------------------------------------------------------------- segments


def test_segments_by_activity_and_attributes():
    lengths = [1, 5, 12, 60, 300, 9]
    seqs = [list(range(1, n + 3)) for n in lengths]  # history for test = n + 1 events
    frame = apply_split(make_frame(seqs), "loo")
    es = build_eval_set(frame, "test", n_items=310)
    table = torch.arange(311.0).expand(len(seqs), -1).clone()  # prefers high item_idx
    table[:, 3] = 1000.0  # item 3 first: a hit for user 0 (test target 3), seen by the others
    result = evaluate(table_score_fn(table), es, ks=(1,), device="cpu")
    assert result.per_user["hr@1"].tolist() == [1, 0, 0, 0, 0, 0]
    users = pl.DataFrame(
        {
            USER_IDX: pl.Series(range(6), dtype=pl.Int32),
            GENDER: ["F", "M", "F", None, "M", "F"],
            AGE: [17, 24, 25, 56, 40, None],
            ZIP: [f"{i:05d}" for i in range(6)],
            "occupation_code": pl.Series([1, 1, 2, 2, 3, 3], dtype=pl.Int16),
        }
    )
    seg = segment_metrics(result, users, metrics=["hr@1"], max_categories=5)
    by = segments_to_dict(seg)
    assert set(by) == {"activity", GENDER, AGE, "occupation_code"}  # zip: too many values
    assert by["activity"] == {
        "1-9": {"n_users": 2, "hr@1": 0.5},
        "10-19": {"n_users": 2, "hr@1": 0.0},
        "50-99": {"n_users": 1, "hr@1": 0.0},
        "250+": {"n_users": 1, "hr@1": 0.0},
    }
    assert list(by["activity"]) == ["1-9", "10-19", "50-99", "250+"]
    assert by[GENDER]["F"] == {"n_users": 3, "hr@1": pytest.approx(1 / 3)}
    assert list(by[GENDER]) == ["F", "M", "unknown"]
    assert list(by[AGE]) == ["<18", "18-24", "25-34", "35-44", "56+", "unknown"]
    assert by[AGE]["<18"]["hr@1"] == 1.0
    assert by["occupation_code"]["1"]["n_users"] == 2
    # segment sizes add up to all users in every segment
    assert seg.group_by("segment").agg(pl.col("n_users").sum())["n_users"].to_list() == [6] * 4
    only_activity = segment_metrics(result)
    assert only_activity["segment"].unique().to_list() == ["activity"]
    assert "arp@1" in only_activity.columns
