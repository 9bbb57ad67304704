"""benchmarks/step_overhead.py: recstack train steps against plain steps on the same batches."""

import json

from bench_script import load_script


def test_both_sides_time_the_same_batches(tmp_path, ml100k_dir):
    bench = load_script("step_overhead")
    out = tmp_path / "overhead.json"
    bench.step_overhead(models=["sasrec"], steps=4, warmup=1, data_dir=ml100k_dir, out=out)
    [run] = json.loads(out.read_text())["runs"]
    assert run["recstack"]["steps"] == run["plain"]["steps"] == 4
    assert run["batch_size"] == 64  # configs/train/sasrec_ml100k.yaml's
    assert run["ratio_mean"] == round(run["recstack"]["mean_ms"] / run["plain"]["mean_ms"], 3)
    assert run["meets_target"] == (run["ratio_mean"] <= 1.15)
