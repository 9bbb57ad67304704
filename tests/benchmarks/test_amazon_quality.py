"""benchmarks/amazon_quality.py: its bookkeeping, and the prepared Amazon data when it is here.

The tests that read ../shared/data/amazon skip without it; none of them trains (seconds).
"""

import json
from pathlib import Path

import pytest
from bench_script import load_script


@pytest.fixture(scope="module")
def amazon():
    return load_script("amazon_quality")


def test_missing_data_is_a_one_line_error(amazon, tmp_path):
    with pytest.raises(SystemExit, match="no Amazon data at"):
        amazon.amazon_quality(data=tmp_path / "absent", stages=["baselines"])
    with pytest.raises(SystemExit, match=r"Beauty\.txt not found"):
        amazon.amazon_quality(data=tmp_path, datasets=["beauty"], stages=["baselines"])


def test_epochs_targets_and_truncated_runs(amazon):
    history = [
        {"epoch": 0, "wall_s": 10.0, "val/ndcg@10": 0.02},
        {"epoch": 1, "wall_s": 25.0, "val/ndcg@10": 0.03},
    ]
    epochs = amazon.epoch_table(history)
    assert [e["epoch_s"] for e in epochs] == [10.0, 15.0]
    assert epochs[1]["ndcg@10"] == 0.03
    runs = {
        "sasrec-seed0": {"key": "sasrec-seed0", "model": "sasrec", "truncated": False,
                         "test": {"ndcg@10": 0.065}},
        "sasrec-seed1": {"key": "sasrec-seed1", "model": "sasrec", "truncated": False,
                         "test": {"ndcg@10": 0.045}},
        "sasrec-seed0-short": {"key": "sasrec-seed0-short", "model": "sasrec",
                               "truncated": True, "test": {"ndcg@10": 0.01}},
    }  # fmt: skip
    summary = amazon.summarise_models(runs)["sasrec"]
    assert summary["truncated_runs"] == ["sasrec-seed0-short"]  # never in the mean
    assert summary["mean"]["ndcg@10"] == pytest.approx(0.055)
    entry = {
        "anchor": amazon.DATASETS["beauty"]["anchor"],
        "baselines": {
            "models": {
                "Markov": {"metrics": {"ndcg@10": 0.05}},
                "EASE": {"metrics": {"ndcg@10": 0.04}},
                "MostPop": {"metrics": {"ndcg@10": 0.006}},
            }
        },
        "summary": {"sasrec": summary},
    }
    targets = amazon.targets(entry)
    assert targets["anchor_target"] == pytest.approx(0.0524)
    assert targets["best_baseline"] == "Markov" and targets["baseline_target"] == 0.0575
    model = targets["models"]["sasrec"]
    assert model["meets_anchor_target"] and model["meets_baseline_target"] is None  # no refit


def test_refits_and_variants_are_summarised_apart(amazon):
    def run(seed, ndcg, refit, label=None):
        key = f"sasrec-seed{seed}" + (f"-{label}" if label else "")
        refit = {"epochs": 9, "fit_seconds": 1.0, "test": {"ndcg@10": refit}} if refit else None
        return key, {"key": key, "model": "sasrec", "label": label, "truncated": False,
                     "test": {"ndcg@10": ndcg}, "refit": refit}  # fmt: skip

    runs = dict([run(0, 0.050, 0.060), run(1, 0.052, 0.058), run(0, 0.07, None, "d128")])
    summary = amazon.summarise_models(runs)
    assert summary["sasrec"]["complete_runs"] == ["sasrec-seed0", "sasrec-seed1"]
    assert summary["sasrec"]["refit"]["mean"]["ndcg@10"] == pytest.approx(0.059)
    assert summary["sasrec-d128"]["refit"] is None  # a variant never joins the shipped mean
    entry = {
        "anchor": amazon.DATASETS["beauty"]["anchor"],
        "baselines": {"models": {"Markov": {"metrics": {"ndcg@10": 0.05}}}},
        "summary": summary,
    }
    model = amazon.targets(entry)["models"]["sasrec"]
    # the validated test against the anchor, the refit's against the baselines
    assert model["mean_ndcg@10"] == pytest.approx(0.051) and not model["meets_anchor_target"]
    assert model["refit_vs_best_baseline"] == pytest.approx(1.18)
    assert model["meets_baseline_target"]


def _data() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon"


@pytest.mark.skipif(not (_data() / "Beauty.txt").exists(), reason="no ../shared/data/amazon")
def test_beauty_prepares_to_the_published_counts(amazon, tmp_path):
    """seqlines: reads the literature's file as is: the README's users, items and events."""
    entry = amazon.dataset_entry("beauty", _data(), tmp_path)
    assert entry["counts"] == {"interactions": 198_502, "users": 22_363, "items": 12_101}
    assert entry["time"]["ts_unit"] == "ordinal"
    assert entry["history_lengths"]["events"]["p50"] >= 5  # 5-core, short histories
    written = (tmp_path / "beauty" / "manifest.json").stat().st_mtime_ns
    again = amazon.dataset_entry("beauty", _data(), tmp_path)  # reused, not prepared again
    assert again["manifest_hash"] == entry["manifest_hash"]
    assert (tmp_path / "beauty" / "manifest.json").stat().st_mtime_ns == written


def test_table_labels_truncated_runs(amazon):
    run = {
        "key": "sasrec-seed0-short", "model": "sasrec", "truncated": True, "epochs_trained": 2,
        "best_epoch": 1, "mean_epoch_s": 40.0, "process": {"peak_rss_mib": 900},
        "time_to_quality": {"threshold": 0.0403, "epoch": None, "wall_s": None},
        "epochs": [{"epoch": 0, "ndcg@10": 0.01}, {"epoch": 1, "ndcg@10": 0.02}],
        "test": {"ndcg@10": 0.02, "hr@10": 0.04},
    }  # fmt: skip
    entry = {
        "dataset": {"name": "beauty", "counts": {}, "manifest_hash": "ab" * 32},
        "anchor": amazon.DATASETS["beauty"]["anchor"],
        "runs": {run["key"]: run},
        "summary": amazon.summarise_models({run["key"]: run}),
    }
    table = amazon.markdown(entry)
    assert "**truncated** at 2 epochs" in table and "0.0100 → 0.0200" in table
    assert "| sasrec | " not in table  # no mean row from truncated runs alone


def test_concurrent_jobs_keep_each_others_runs_and_sections(amazon, tmp_path):
    """Two jobs read the file, then each writes: neither loses what the other wrote."""
    out = tmp_path / "amazon_beauty.json"
    base = {"anchor": amazon.DATASETS["beauty"]["anchor"], "runs": {}}
    run = {"key": "sasrec-seed1", "model": "sasrec", "truncated": False, "test": {"ndcg@10": 0.05}}
    trainer, piper = json.loads(json.dumps(base)), json.loads(json.dumps(base))
    piper["pipeline"] = {"pipeline_over_full": {"ndcg@10": 0.98}}
    amazon.write_entry(out, piper, {}, ["pipeline"])
    amazon.write_entry(out, trainer, {run["key"]: run}, ["train"])  # read before the pipeline
    written = json.loads(out.read_text())
    assert written["runs"] == {"sasrec-seed1": run}
    assert written["pipeline"] == piper["pipeline"]  # kept: the train job did not write it
    assert written["targets"]["pipeline_over_full"] == 0.98


@pytest.mark.slow
def test_tune_stage_records_the_best_trial_as_a_tuned_run_and_refits_it(amazon, tmp_path):
    """`--stages '[tune,refit]'` on a tiny sequence-per-line log: a 2-trial `recstack tune`
    with the shipped search space, its best trial as the run `sasrec-seed0-tuned` with the
    study beside it, then refitted like the other runs (~20 s)."""
    data = tmp_path / "data"
    data.mkdir()
    lines = [
        f"{u} " + " ".join(str((u + i) % 40 + 1) for i in range(5 + u % 4)) for u in range(1, 81)
    ]
    (data / "Beauty.txt").write_text("\n".join(lines) + "\n")
    amazon.amazon_quality(
        data=data, datasets=["beauty"], stages=["tune", "refit"], models=["sasrec"], n_trials=2,
        runs=tmp_path / "runs", out_dir=tmp_path / "out",
    )  # fmt: skip
    written = json.loads((tmp_path / "out" / "amazon_beauty.json").read_text())
    study = written["tune"]["sasrec"]
    assert study["states"] == {"complete": 2} and study["default_trial"]["number"] == 0
    assert study["search"] == "configs/search/sasrec_ml100k.yaml"
    run = written["runs"]["sasrec-seed0-tuned"]
    assert run["label"] == "tuned" and run["test"]["ndcg@10"] > 0.5  # a learnable chain
    assert run["best_epoch"] is not None and run["epochs_trained"] > run["best_epoch"]
    assert run["refit"]["epochs"] == run["best_epoch"] + 1
    assert "sasrec-tuned" in written["summary"]  # a row of its own, never in the shipped mean
