"""benchmarks/pipeline_cost.py: both sides run, and the "before" side really imports the code
of its commit (a git worktree), not this checkout's."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_script import BENCHMARKS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))  # its config helpers
from service_config import free_port, write_serve_config


@pytest.mark.slow  # ~10 s: a worktree and two processes that load the models
def test_the_before_side_runs_the_code_of_its_commit(ml100k_artifacts, tmp_path):
    config = write_serve_config(
        tmp_path / "serve.yaml", ml100k_artifacts, tmp_path / "state", free_port(), colocated=True
    )
    out = tmp_path / "pipeline_cost.json"
    command = [sys.executable, str(BENCHMARKS / "pipeline_cost.py"), "--before", "HEAD",
               "--rounds", "1", "--calls", "20", "--config", str(config),
               "--dataset", str(ml100k_artifacts["dataset"]), "--out", str(out)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, cwd=BENCHMARKS.parent)
    results = json.loads(out.read_text())["results"]
    before, after = (
        Path(results["before"]["recstack_from"]),
        Path(results["after"]["recstack_from"]),
    )
    assert before.parent.parent.name.startswith("pipeline-before-") and not before.exists()
    assert after == BENCHMARKS.parent / "recstack"
    assert all(results[side]["rounds"][0]["latency_ms"]["p50"] > 0 for side in ("before", "after"))
    worktrees = subprocess.run(["git", "worktree", "list"], capture_output=True, text=True,
                               cwd=BENCHMARKS.parent, check=True).stdout  # fmt: skip
    assert "pipeline-before-" not in worktrees  # removed again
