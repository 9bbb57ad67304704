"""benchmarks/large_catalogue.py: its configs pass recstack's own checks; the whole chain at a
small size (slow: ~1 min)."""

import json
from pathlib import Path

import pytest
from bench_script import load_script

from recstack.serving.config import read_serve_config
from recstack.training.train_cli import check_config


@pytest.fixture(scope="module")
def bench():
    return load_script("large_catalogue")


def test_the_serve_config_is_the_colocated_pipeline_on_this_runs_files(bench, tmp_path):
    artifacts = {kind: tmp_path / "artifacts" / kind / "v1" for kind in bench.KINDS}
    path = tmp_path / "serve.yaml"
    path.write_text(json.dumps(bench.serve_config(artifacts, tmp_path, tmp_path / "data")))
    config = read_serve_config(path)  # what `recstack serve` checks first
    args = config["args"]
    assert args.pipeline == "colocated" and args.event_log == tmp_path / "events"
    assert args.store == {"kind": "embedded", "path": str(tmp_path / "state.sqlite")}
    assert args.seed_histories_from == tmp_path / "data"
    models = config["models"]
    assert models["retriever"].models == {"main": str(artifacts["two_tower"])}
    assert models["retriever"].index == "auto"
    assert models["ranker"].models == {"main": str(artifacts["sasrec"])}


@pytest.mark.parametrize("kind", ["two_tower", "sasrec"])
def test_the_train_configs_are_valid_brief_sampled_softmax_runs(bench, tmp_path, kind):
    config = check_config(bench.train_config(kind, 7, tmp_path / "data", tmp_path / "runs"))
    assert config["trainer"]["limit_train_batches"] == 7
    assert config["trainer"]["limit_val_batches"] == 0 and config["baselines"] is False
    loss = config["model"]["init_args"]["loss"]
    assert loss["kind"] == "sampled" and loss["negatives"] == "mixed"
    assert config["data"]["cache_dir"] == str(tmp_path / "runs" / "arrays")


@pytest.mark.slow
def test_the_chain_at_a_small_size(bench, tmp_path):
    out = tmp_path / "result.json"
    argv = ["--items", "5000", "--events", "200000", "--users", "200", "--train-batches", "5"]
    argv += ["--ann", "on", "--requests", "20", "--workdir", str(tmp_path / "run")]
    result = bench.main([*argv, "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["data"]["items"] == 5000 and result["data"]["interactions"] == 200_000
    ann = result["artifacts"]["two_tower"]["ann"]
    assert ann["recall_at_100"] >= 0.95 and ann["tried"][0]["nlist"] == 128  # the IVF candidate
    loads = result["serving"]["loads"]
    assert abs(loads["retriever_recall_at_load"] - ann["recall_at_100"]) < 1e-3
    search = result["serving"]["search_top100_batch1"]
    assert search["recall_at_100_with_history_excluded"] >= 0.9
    assert {"exact", "ann"} <= set(search) and {"exact", "ann"} <= set(
        result["serving"]["retrieve100_rank10_batch1"]
    )
    sasrec = result["artifacts"]["sasrec"]
    assert (sasrec["ann"] is None) == ("ann_refused" in sasrec)
    assert Path(result["serve_config"]).is_file() and result["serving"]["peak_rss_mib"] > 0
