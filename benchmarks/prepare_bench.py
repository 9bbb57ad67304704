"""Time and peak memory of `recstack data synth` and `recstack data prepare` at scale.

    .venv/bin/python benchmarks/prepare_bench.py                 # 20M events (ML-20M size)
    .venv/bin/python benchmarks/prepare_bench.py --events 1000000 --users 6000 --items 3700

It also exports the same log as one CSV file (the shape of MovieLens-20M's ratings.csv) and
prepares that, which exercises the staging path for non-Parquet sources.

Each stage runs as its own process (`recstack ...`), so its wall time and peak RSS
(getrusage of that child) are measured whole, imports included. Targets (2 cores):
prepare <= 60 s and prepare peak RSS <= 3 x the raw Parquet size.
Writes benchmarks/results/prepare_bench.json (or --out).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

RESULTS = Path(__file__).parent / "results"


def run_measured(cmd: list[str]) -> dict:
    """Run a command; return wall seconds and the child's peak RSS in MiB."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"benchmark command failed: {' '.join(cmd)}")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def dir_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*.parquet")) / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=138_000)
    parser.add_argument("--items", type=int, default=27_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep data here (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "prepare_bench.json")
    args = parser.parse_args()

    recstack = [sys.executable, "-m", "recstack.cli"]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recstack-prepare-bench-"))
    raw, prepared = workdir / "raw", workdir / "prepared"
    csv, prepared_csv = workdir / "events.csv", workdir / "prepared-csv"
    for path in (raw, prepared, prepared_csv):
        shutil.rmtree(path, ignore_errors=True)
    try:
        synth = run_measured(
            [
                *recstack,
                "data",
                "synth",
                "--users",
                str(args.users),
                "--items",
                str(args.items),
                "--events",
                str(args.events),
                "--seed",
                str(args.seed),
                "--out",
                str(raw),
            ]
        )
        prep = run_measured(
            [
                *recstack,
                "data",
                "prepare",
                "--source",
                f"synth:{raw}",
                "--out",
                str(prepared),
                "--quiet",
                "true",
            ]
        )
        raw_mib, prepared_mib = dir_mib(raw), dir_mib(prepared)
        manifest = json.loads((prepared / "manifest.json").read_text())
        pl.scan_parquet(raw / "events" / "*.parquet").sink_csv(csv)
        prep_csv = run_measured(
            [
                *recstack,
                "data",
                "prepare",
                "--source",
                f"csv:{csv}",
                "--out",
                str(prepared_csv),
                "--columns.user",
                "user_id",
                "--columns.item",
                "item_id",
                "--columns.timestamp",
                "ts",
                "--columns.context",
                "[device]",
                "--quiet",
                "true",
            ]
        )
        prep_csv["csv_mib"] = round(csv.stat().st_size / 2**20, 1)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    result = {
        "benchmark": "prepare_bench",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "config": vars(args) | {"workdir": str(args.workdir), "out": str(args.out)},
        "synth": synth,
        "prepare": prep,
        "prepare_from_csv": prep_csv,
        "raw_parquet_mib": raw_mib,
        "prepared_parquet_mib": prepared_mib,
        "prepare_rss_over_raw_parquet": round(prep["peak_rss_mib"] / raw_mib, 2),
        "counts": manifest["counts"],
        "targets": {"prepare_seconds_max": 60, "prepare_rss_over_raw_parquet_max": 3.0},
        "meets_targets": prep["seconds"] <= 60 and prep["peak_rss_mib"] <= 3 * raw_mib,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
