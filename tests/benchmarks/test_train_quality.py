"""benchmarks/train_quality.py: rerunning one model keeps the other model's figures."""

import json

import pytest
from bench_script import load_script


def test_rerunning_one_model_keeps_the_others_of_the_same_dataset(tmp_path):
    bench = load_script("train_quality")
    out = tmp_path / "quality.json"
    out.write_text(json.dumps({"manifest_hash": "h1", "models": {"sasrec": 1, "two_tower": 2}}))
    earlier = bench._earlier(out)
    assert bench._kept_models(earlier, {"manifest_hash": "h1", "models": {"sasrec": 3}}) == {
        "two_tower": 2
    }
    other_data = {"manifest_hash": "h2", "models": {"sasrec": 3}}
    assert bench._kept_models(earlier, other_data) == {}  # another dataset version's figures go
    assert bench._earlier(tmp_path / "absent.json") == {}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"models": 3}'])
def test_an_out_file_that_is_no_summary_stops_the_job_before_training(tmp_path, text):
    out = tmp_path / "quality.json"
    out.write_text(text)
    with pytest.raises(SystemExit, match="is not a train_quality summary"):
        load_script("train_quality").train_quality(models=["sasrec"], out=out, runs=tmp_path)
    assert not (tmp_path / "sasrec-seed0").exists()  # nothing trained
