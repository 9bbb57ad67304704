"""benchmarks/train_quality.py: rerunning one model keeps the other model's figures."""

import json

from bench_script import load_script


def test_rerunning_one_model_keeps_the_others_of_the_same_dataset(tmp_path):
    bench = load_script("train_quality")
    out = tmp_path / "quality.json"
    out.write_text(json.dumps({"manifest_hash": "h1", "models": {"sasrec": 1, "two_tower": 2}}))
    rerun = {"manifest_hash": "h1", "models": {"sasrec": 3}}
    assert bench._kept_models(out, rerun) == {"two_tower": 2}
    other_data = {"manifest_hash": "h2", "models": {"sasrec": 3}}
    assert bench._kept_models(out, other_data) == {}  # figures of another dataset version go
    assert bench._kept_models(tmp_path / "absent.json", rerun) == {}
