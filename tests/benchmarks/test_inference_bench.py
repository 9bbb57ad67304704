"""benchmarks/inference_bench.py end to end at its --quick sizes (CPU, ~30 s)."""

import json
from pathlib import Path

import pytest
import torch
from bench_script import load_script

TIMING = {"p50_ms", "mean_ms", "min_ms", "calls", "other_load_cores"}
METHODS = {"exact-numpy", "exact-ort", "exact-torch", "faiss-flat", "faiss-ivf", "faiss-hnsw"}


@pytest.fixture(scope="module")
def bench():
    return load_script("inference_bench")


@pytest.fixture(scope="module")
def quick(bench, tmp_path_factory) -> tuple[dict, Path, Path]:
    out = tmp_path_factory.mktemp("inference-bench") / "bench.json"
    plot = out.with_name("plot.png")
    returned = bench.main(["--quick", "--out", str(out), "--plot", str(plot), "--threads", "2"])
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    return result, out, plot


def test_structure_and_config(quick):
    result, _, plot = quick
    assert {"machine", "versions", "config", "bandwidth", "targets", "models", "retrieval"} <= set(
        result
    )
    assert {"onnxruntime", "torch", "faiss", "numpy", "onnx"} <= set(result["versions"])
    assert result["config"]["items"] == [2000, 5000] and result["config"]["quick"] is True
    assert result["config"]["k"] == 100 and result["machine"]["threads"] == 2
    models = result["config"]["models"]
    assert models["sasrec"]["n_layers"] == 2 and models["sasrec"]["dim"] == 64
    assert models["two_tower_user"]["n_items"] == models["n_items"] == 1682
    cpu = result["bandwidth"]["cpu"]
    assert cpu["read_gbps"] > 0.1 and cpu["copy_gbps"] > 0.1 and cpu["gemm_gflops"] > 0.1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_model_rows_cover_the_grid_and_ort_agrees_with_torch(bench, quick):
    rows = quick[0]["models"]
    cells = {(r["model"], r["engine"], r["batch"], r["length"]) for r in rows}
    assert cells == {
        (model, engine, batch, length)
        for model in ("sasrec", "two_tower_user")
        for engine in ("torch", "onnxruntime")
        for batch in (1, 4)
        for length in (5, 20)
    }
    assert len(rows) == len(cells)
    for row in rows:
        assert TIMING <= set(row) and row["device"] == "cpu"
        assert 0 < row["min_ms"] <= row["p50_ms"] and row["mean_ms"] >= row["min_ms"]
        assert row["calls"] == bench.ROUNDS  # --quick: --repeats 3, one call per round
        if row["engine"] == "onnxruntime":
            assert row["provider"] == "CPUExecutionProvider"
            assert 0 <= row["max_abs_diff"] < 1e-4, row
            assert row["p50_ratio_to_torch"] > 0
    sasrec_ort = next(r for r in rows if (r["model"], r["engine"]) == ("sasrec", "onnxruntime"))
    assert 0 <= sasrec_ort["export_parity"] < 1e-4  # the exporter's own check


def test_retrieval_recall_and_exact_agreement(quick):
    rows = quick[0]["retrieval"]
    assert {r["method"] for r in rows} == METHODS
    assert {r["items"] for r in rows} == {2000, 5000} and {r["batch"] for r in rows} == {1, 8}
    for row in rows:
        assert 0.0 <= row["recall"] <= 1.0, row
        assert row["qps"] > 0 and row["p50_ms"] > 0 and row["speedup_vs_best_exact_cpu"] > 0
        if row["method"].startswith("exact") or row["method"] == "faiss-flat":
            assert row["recall"] >= 0.99, row  # ties aside, exact is exact
            assert row["score_max_abs_diff"] < 1e-4, row
            assert row["gbps"] > 0 and row["read_gbps"] > 0 and row["roofline_fraction"] > 0
            assert row["bandwidth_fraction"] == pytest.approx(row["gbps"] / row["read_gbps"])
            assert row["read_gbps_best"] >= row["read_gbps"]  # fastest call vs median
            assert row["bandwidth_bound_ms"] > 0 and row["compute_bound_ms"] > 0
        else:
            assert "gbps" not in row
    ivf = sorted(
        (r["setting"]["nprobe"], r["recall"])
        for r in rows
        if (r["method"], r["items"], r["batch"]) == ("faiss-ivf", 5000, 8)
    )
    recalls = [recall for _, recall in ivf]
    assert recalls == sorted(recalls) and recalls[0] < 0.9 and recalls[-1] > 0.99, ivf
    builds = {(i["items"], i["method"]): i for i in quick[0]["indexes"]}
    assert builds[(5000, "faiss-hnsw")]["params"] == {"M": 32, "efConstruction": 40}
    assert builds[(5000, "faiss-hnsw")]["index_mib"] > builds[(5000, "faiss-flat")]["index_mib"]
    assert builds[(5000, "faiss-flat")]["index_mib"] == pytest.approx(5000 * 64 * 4 / 2**20, 0.01)
    assert builds[(5000, "faiss-ivf")]["params"]["nlist"] == 64


def test_targets_report_met_or_missed(quick):
    targets = quick[0]["targets"]
    ort = targets["ort_latency_le_half_torch_at_batch_1"]
    assert len(ort["checks"]) == 4  # 2 models x 2 lengths at batch 1
    assert ort["met"] == all(c["ratio"] <= 0.5 for c in ort["checks"])
    bandwidth = targets["exact_batched_ge_half_bandwidth"]
    assert bandwidth["items"] == 5000 and bandwidth["batch"] == 8
    assert bandwidth["met"] == (bandwidth["best"]["bandwidth_fraction"] >= 0.5)
    ann = targets["ann_recall_ge_0.95_at_10x_exact"]
    assert isinstance(ann["met"], bool) and ann["items"] == 5000
    assert ann["best"] is None or ann["best"]["recall"] >= 0.95


def test_bad_arguments_exit_with_one_line(bench, capsys, tmp_path):
    for argv, message in (
        (["--batches", "0"], "must be >= 1"),
        (["--items", "50"], "--items must all be > --k"),
        (["--queries", "8", "--query-batches", "1", "16"], "--queries (8) must be >="),
        (["--device", "tpu"], "invalid choice"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            bench.main([*argv, "--out", str(tmp_path / "x.json")])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_a_one_line_error(bench, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cuda", "--quick", "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "torch sees no CUDA device" in err and "Traceback" not in err
