"""What one recommend call costs in-process, with the code at `--before` (a commit) and this
checkout's: the pipeline the HTTP engines run (store read, arm, retrieve `retrieve_n`, rank 10)
with the models in this process, one call at a time, no HTTP. At 1M items this pipeline is
most of a replica's CPU per request, so it sets how close to its cores a 2-core host runs at
200 req/s.

    .venv/bin/python benchmarks/pipeline_cost.py --before a609f5c     # ~3 min at 1M items

Each side runs in its own process (`--measure`); the "before" side imports recstack from a
git worktree at `--before`. The sides alternate for `--rounds` rounds, so a drift of the
host's speed hits both. Per side: the median over rounds of the per-round p50 and mean ms
(one thread, nothing queued: a call's wall time is its CPU time).
Writes benchmarks/results/pipeline_cost.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from stall_fixes import REPO, write_results

RESULTS = Path(__file__).parent / "results"


def tree_at(commit: str) -> Path:
    """A worktree of the repo at `commit` that imports as `recstack` from PYTHONPATH: its
    pyproject's package-dir (recstack.serving lives in serving/, …) made into symlinks."""
    tree = Path(tempfile.mkdtemp(prefix="pipeline-before-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), commit], cwd=REPO,
                   check=True)  # fmt: skip
    package_dir = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, folder in package_dir["package-dir"].items():
        if package != "recstack":
            (tree / package.replace(".", "/")).symlink_to(tree / folder)
    return tree


def measure(config: Path, dataset: Path, calls: int) -> dict:
    """One side: the in-process floor of engine_compare (its warm-up included), timed."""
    from engine_compare import in_process
    from load_mix import Catalogue

    import recstack

    users = Catalogue.from_dataset(dataset).user_ids
    floor = in_process(config, users, calls)
    return {"recstack_from": str(Path(recstack.__file__).parent), "latency_ms": floor["latency_ms"]}


def run_side(tree: Path | None, args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, __file__, "--measure", "--config", str(args.config),
           "--dataset", str(args.dataset), "--calls", str(args.calls)]  # fmt: skip
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"the {'before' if tree else 'after'} side failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="a609f5c")
    parser.add_argument("--config", type=Path, default=REPO / "runs/large-catalogue/serve.yaml")
    parser.add_argument("--dataset", type=Path, default=REPO / "runs/large-catalogue/data")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline_cost.json")
    parser.add_argument("--measure", action="store_true", help="one side, in this process")
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.config, args.dataset, args.calls)))
        return
    tree = tree_at(args.before)
    try:
        rounds = {"before": [], "after": []}
        for i in range(args.rounds):
            for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
                rounds[side].append(run_side(tree if side == "before" else None, args))
                print(side, rounds[side][-1]["latency_ms"]["p50"], flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO)
    results = {
        side: {
            "recstack_from": runs[0]["recstack_from"],
            "p50_ms": float(np.median([r["latency_ms"]["p50"] for r in runs])),
            "mean_ms": float(np.median([r["latency_ms"]["mean"] for r in runs])),
            "rounds": runs,
        }
        for side, runs in rounds.items()
    }
    results["after_over_before_mean"] = results["after"]["mean_ms"] / results["before"]["mean_ms"]
    write_results("pipeline_cost", args.before, results, args.out,
                  config=str(args.config), calls=args.calls)  # fmt: skip


if __name__ == "__main__":
    main()
