"""benchmarks/gpu_check.sh (it runs on a GPU machine): its syntax, the scripts it calls, and
the JSON summary it ends with (over the committed results of an earlier GPU run)."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_the_script_parses_and_calls_scripts_that_exist():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    called = set(re.findall(r"(benchmarks/\w+\.py|tests/\w+/\w+\.py)", SCRIPT.read_text()))
    assert {"benchmarks/train_bench.py", "benchmarks/inference_bench.py"} <= called
    assert all((ROOT / path).is_file() for path in called), called


def summary(folder: Path) -> dict:
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_summary.py"), str(folder)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def test_the_summary_lists_missing_steps_and_reads_the_results(tmp_path):
    assert summary(tmp_path)["missing"] == ["gpu_tests", "training", "tuning", "inference"]
    result = summary(ROOT / "benchmarks" / "results" / "gpu")
    rows = {(row["size"], row["model"]): row for row in result["training"]}
    assert (
        rows["ml100k", "sasrec"]["epoch_s"] > 0
        and not rows["ml100k", "sasrec"]["epoch_s_estimated"]
    )
    assert rows["synth-20m", "sasrec"]["epoch_s_estimated"] is True
    assert "passed" in result["gpu_tests"]
    assert result["tuning"]["best_val_ndcg@10"] >= result["tuning"]["default_val_ndcg@10"]
