"""Baselines (MostPop, EASE, Markov) and the `recstack eval baselines` report."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from interaction_frames import make_frame

from recstack.datasets.splits import apply_split
from recstack.errors import RecstackError
from recstack.eval_set import build_eval_set, history_frame
from recstack.schema import GENDER, ITEM_IDX, PAD_IDX, USER_IDX
from recstack.training.eval.baselines import (
    EASE,
    Markov,
    MostPop,
    ease_weights,
    item_gram,
    select_ease_l2,
)
from recstack.training.eval.baselines_cmd import baselines_report, run_baselines
from recstack.training.eval.evaluator import EvalBatch, evaluate


def batch_of(histories) -> EvalBatch:
    width = max(1, max(len(h) for h in histories))
    padded = [h + [PAD_IDX] * (width - len(h)) for h in histories]
    return EvalBatch(
        users=torch.arange(len(histories)),
        history=torch.tensor(padded, dtype=torch.long),
        lengths=torch.tensor([len(h) for h in histories]),
    )


def markov_log(n_users=150, n_items=40, seed=0, ties=False):
    """Sequences that follow a planted successor chain 70% of the time."""
    rng = np.random.default_rng(seed)
    successor = rng.permutation(np.arange(1, n_items + 1))
    pop = 1.0 / np.arange(1, n_items + 1)
    pop /= pop.sum()
    seqs, times = [], []
    for _ in range(n_users):
        n = int(rng.integers(4, 15))
        seq = [int(rng.choice(np.arange(1, n_items + 1), p=pop))]
        for _ in range(n - 1):
            nxt = successor[seq[-1] - 1] if rng.random() < 0.7 else rng.integers(1, n_items + 1)
            seq.append(int(nxt))
        seqs.append(seq)
        step = rng.integers(0, 2, n) if ties else np.ones(n, dtype=np.int64)
        times.append(np.cumsum(step).tolist())
    return seqs, times


class FakeDataset:
    """The attributes of PreparedDataset that the report reads."""

    def __init__(self, path: Path, interactions, n_items, users):
        self.path, self.interactions, self.n_items, self.users = path, interactions, n_items, users
        self.manifest = {"content_hash": "abc123"}
        self.n_users = users.height


# ---------------------------------------------------------------- models


def test_most_pop_counts_history_events():
    frame = apply_split(make_frame([[1, 2, 3], [2, 3, 4], [3, 1, 4]]), "loo")
    model = MostPop().fit(history_frame(frame, "test"), n_items=4)
    scores = model(batch_of([[1], [2, 3]]))
    assert scores.shape == (2, 5)
    # history (test) = first two events of each user: 1, 2, 2, 3, 3, 1
    assert scores[0].tolist() == [0, 2, 2, 2, 0]
    with pytest.raises(RecstackError, match="not fitted"):
        MostPop()(batch_of([[1]]))


def test_ease_matches_closed_form():
    rng = np.random.default_rng(0)
    x = (rng.random((30, 8)) < 0.3).astype(np.float64)
    users, items = np.nonzero(x)
    history = pl.DataFrame(
        {USER_IDX: users.astype(np.int32), ITEM_IDX: (items + 1).astype(np.int32)}
    )
    gram = item_gram(history, 8)
    np.testing.assert_allclose(gram, x.T @ x)
    lam = 5.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(8))
    expected = np.eye(8) - p / np.diag(p)[None, :]
    np.testing.assert_allclose(expected.diagonal(), 0, atol=1e-12)
    weights = ease_weights(gram, lam, torch.device("cpu")).numpy()
    np.testing.assert_allclose(weights, expected, atol=1e-5)
    model = EASE(l2=lam, device="cpu").fit(history, 8)
    scores = model(batch_of([[1, 3], [8]]))
    assert scores.shape == (2, 9)
    np.testing.assert_allclose(scores[0, 1:].numpy(), expected[0] + expected[2], atol=1e-5)
    np.testing.assert_allclose(scores[1, 1:].numpy(), expected[7], atol=1e-5)
    assert model.hyperparameters() == {"l2": 5.0}
    repeated = model(batch_of([[1, 3, 1, 3], [8, 8], []]))  # a history is a set of items
    np.testing.assert_allclose(repeated[:2].numpy(), scores.numpy(), atol=1e-6)
    assert not repeated[2].any()


def test_ease_refuses_large_catalogues_with_one_line():
    history = pl.DataFrame({USER_IDX: [0], ITEM_IDX: [1]})
    with pytest.raises(RecstackError, match="k-core") as err:
        EASE(max_items=100).fit(history, n_items=101)
    assert "\n" not in str(err.value) and "max_items" in str(err.value)


def test_markov_scores_from_last_item_with_popularity_fallback():
    # transitions: 1->2 twice, 1->4, 2->3; popularity: 1:3, 2:2, 3:1, 4:1
    frame = pl.DataFrame(
        {
            USER_IDX: pl.Series([0, 0, 0, 1, 1, 2, 2], dtype=pl.Int32),
            ITEM_IDX: pl.Series([1, 2, 3, 1, 2, 1, 4], dtype=pl.Int32),
        }
    )
    model = Markov().fit(frame, n_items=5)
    scores = model(batch_of([[3, 1], [2], [4], []]))
    top = scores.argsort(dim=1, descending=True, stable=True)
    assert top[0, 0] == 2  # after 1: 2 (count 2), then 4 (count 1)
    assert top[0, 1] == 4
    assert top[1, 0] == 3  # after 2: 3
    assert top[2, :3].tolist() == [1, 2, 3]  # 4 has no successor: popularity, ties by idx
    assert top[3, :3].tolist() == [1, 2, 3]  # empty history: popularity
    assert (scores[2] < 1).all()  # the popularity tie-break stays below one transition


def test_markov_beats_most_pop_on_planted_chain():
    seqs, times = markov_log()
    frame = apply_split(make_frame(seqs, times), "loo")
    test = build_eval_set(frame, "test", n_items=40)
    history = history_frame(frame, "test")
    markov = evaluate(Markov().fit(history, 40), test, device="cpu").metrics
    pop = evaluate(MostPop().fit(history, 40), test, device="cpu").metrics
    assert markov["ndcg@10"] > pop["ndcg@10"] + 0.1


def test_select_ease_l2_returns_grid_maximum():
    seqs, times = markov_log(seed=1)
    frame = apply_split(make_frame(seqs, times), "loo")
    valid = build_eval_set(frame, "valid", n_items=40)
    best, curve = select_ease_l2(
        history_frame(frame, "valid"), valid, [1.0, 30.0, 900.0], device="cpu"
    )
    assert list(curve) == [1.0, 30.0, 900.0]
    assert curve[best] == max(curve.values())
    for lam, value in curve.items():
        model = EASE(l2=lam, device="cpu").fit(history_frame(frame, "valid"), 40)
        assert evaluate(model, valid, ks=(10,), device="cpu").metrics["ndcg@10"] == value


# ---------------------------------------------------------------- report


def _dataset(tmp_path, ties=False):
    seqs, times = markov_log(ties=ties)
    users = pl.DataFrame(
        {
            USER_IDX: pl.Series(range(len(seqs)), dtype=pl.Int32),
            GENDER: ["F" if u % 3 else "M" for u in range(len(seqs))],
        }
    )
    return FakeDataset(tmp_path / "ds", make_frame(seqs, times), 40, users)


def test_baselines_report_writes_json_and_table(tmp_path, capsys):
    ds = _dataset(tmp_path)
    out = tmp_path / "report.json"
    payload = baselines_report(ds, ks=[10, 20], device="cpu", ease_lambdas=[10.0, 100.0], out=out)
    assert payload["out"] == str(out)
    saved = json.loads(out.read_text())
    assert saved["manifest_hash"] == "abc123"
    assert saved["split"] == "loo" and saved["ks"] == [10, 20]
    assert set(saved["models"]) == {"MostPop", "EASE", "Markov"}
    ease = saved["models"]["EASE"]
    assert ease["hyperparameters"]["l2"] in (10.0, 100.0)
    assert set(ease["selection"]["curve"]) == {"10.0", "100.0"}
    assert ease["selection"]["target"] == "valid"
    for entry in saved["models"].values():
        assert {"ndcg@10", "hr@20", "coverage@10", "pop_lift@10", "novelty@20"} <= set(
            entry["metrics"]
        )
        assert not any("sampled" in k for k in entry["metrics"])
        assert set(entry["segments"]) == {"activity", GENDER}
        assert entry["timings"]["eval_s"] >= 0
        assert "tie_shuffles" not in entry
    # one test target per user; targets the user had already seen are not ranked
    assert saved["eval"]["n_users"] + saved["eval"]["n_targets_dropped_seen"] == 150
    printed = capsys.readouterr().out
    assert "MostPop" in printed and "EASE" in printed and "NDCG@10" in printed


def test_baselines_report_tie_shuffles_sampled_and_skips(tmp_path, capsys):
    ds = _dataset(tmp_path, ties=True)
    out = tmp_path / "report.json"
    payload = baselines_report(
        ds,
        ks=[5],
        tie_shuffles=2,
        sampled=20,
        out=out,
        device="cpu",
        ease_max_items=10,
    )
    saved = json.loads(out.read_text())
    assert "k-core" in saved["models"]["EASE"]["skipped"]
    pop = saved["models"]["MostPop"]
    assert "ndcg@5_sampled20" in pop["metrics"]
    shuffles = pop["tie_shuffles"]
    assert shuffles["seeds"] == [0, 1]
    assert set(shuffles["mean"]) == set(pop["metrics"]) == set(shuffles["std"])
    assert saved["seeds"]["tie_shuffles"] == [0, 1]
    assert payload["models"]["Markov"]["tie_shuffles"]["std"]["hr@5"] >= 0
    assert "±" in capsys.readouterr().out


def test_run_baselines_on_real_ml100k(ml100k_dir, tmp_path, monkeypatch, capsys):
    """The published protocol on real data: LOO, full ranking, seen items masked."""
    monkeypatch.chdir(tmp_path)
    payload = run_baselines(ml100k_dir, device="cpu")
    assert Path(payload["out"]) == Path("runs/baselines/ml-100k-loo.json")
    assert json.loads(Path(payload["out"]).read_text())["eval"]["n_users"] == 943
    models = payload["models"]
    pop, ease = models["MostPop"]["metrics"], models["EASE"]["metrics"]
    # reference values of this protocol: MostPop ~0.045 and EASE ~0.072 NDCG@10
    assert 0.035 < pop["ndcg@10"] < 0.055
    assert 0.065 < ease["ndcg@10"] < 0.085 and ease["hr@10"] > 1.4 * pop["hr@10"]
    assert ease["coverage@10"] > 3 * pop["coverage@10"]
    assert {"activity", "gender", "age", "occupation"} <= set(models["EASE"]["segments"])
    printed = capsys.readouterr().out
    assert "MostPop" in printed and "by user segment" in printed
