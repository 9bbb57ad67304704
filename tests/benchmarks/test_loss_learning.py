"""benchmarks/loss_learning.py: each loss recipe against full CE over the same epochs."""

import json

import pytest
from bench_script import load_script
from tiny_data import prepared_log


@pytest.mark.slow  # two `recstack train` processes: ~15 s on 2 cores
def test_each_recipe_is_compared_with_ce_over_the_same_epochs(tmp_path):
    users = [f"u{u}" for u in range(30) for _ in range(8)]  # item i is followed by i + 1
    items = [f"i{(u + n) % 12}" for u in range(30) for n in range(8)]
    dataset = prepared_log(tmp_path, users, items, list(range(len(users))))
    bench = load_script("loss_learning")
    out = tmp_path / "losses.json"
    bench.loss_learning(recipes=["gbce"], epochs=2, dataset=dataset, runs=tmp_path, out=out)
    result = json.loads(out.read_text())
    assert set(result["recipes"]) == {"ce", "gbce"}  # CE, the reference, always runs
    for row in result["recipes"].values():
        assert len(row["val_ndcg@10_by_epoch"]) == 2  # no early stop
        assert row["best_val_ndcg@10"] == max(row["val_ndcg@10_by_epoch"])
    ce, gbce = result["recipes"]["ce"], result["recipes"]["gbce"]
    assert ce["ratio_to_ce"] == 1.0
    assert gbce["ratio_to_ce"] == round(gbce["best_val_ndcg@10"] / ce["best_val_ndcg@10"], 3)
    assert gbce["learns"] == (gbce["ratio_to_ce"] >= 0.9)
    assert "--data.batch_size" in gbce["flags"]
