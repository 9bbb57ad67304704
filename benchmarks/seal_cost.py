"""What sealing one event-log segment costs a serving replica, before and after a change.

A replica's open segment gets one Arrow record batch per append and is sealed after
`segment_max_age_s` (300 s by default): at 30 appends/s that is a 9,000-batch segment, and the
seal (read it, write Parquet) runs on a thread of the replica's process. In the 1M-item soak a
seal took 566 ms while the event loop lagged up to 193 ms. This script builds such a segment
once and seals copies of it with the segment reader at `--before` (a commit) and with this
checkout's, while a probe thread sleeps 1 ms in a loop: its worst overshoot is how long the
seal kept other Python threads (the event loop) from running.

    .venv/bin/python benchmarks/seal_cost.py              # ~1 min, before = 85155c9

Writes benchmarks/results/seal_cost.json.
"""

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from stall_fixes import file_at, module_from, write_results

RESULTS = Path(__file__).parent / "results"


def build_segment(appends: int) -> Path:
    """A copy of an open IPC segment of `appends` one-event batches, written by the real
    EventLog (the copy is taken before the log seals its own at close)."""
    from recstack.event_log_format import OPEN_SUFFIX
    from recstack.serving.event_log import EventLog

    folder = Path(tempfile.mkdtemp(prefix="seal-cost-"))
    with EventLog(folder / "log", writer="bench", segment_max_age_s=0,
                  segment_max_events=appends + 1) as log:  # fmt: skip
        for i in range(appends):
            log.append([{"user_id": f"u{i % 500}", "item_id": f"i{i}", "type": "view", "ts": i}])
        (segment,) = (folder / "log").glob(f"*{OPEN_SUFFIX}")
        return Path(shutil.copy(segment, folder / segment.name))


def seal_once(read_open, segment: Path) -> tuple[float, float]:
    """(seal ms, worst 1 ms-sleep overshoot ms) for one copy of `segment`."""
    from recstack.serving.event_log import _write_parquet_atomic

    copy = Path(tempfile.mkdtemp(prefix="seal-copy-")) / segment.name
    shutil.copy(segment, copy)
    lags, stop = [], threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            time.sleep(0.001)
            lags.append((time.perf_counter() - t) * 1000 - 1)

    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(0.1)
    start = time.perf_counter()
    table, _ = read_open(copy)
    _write_parquet_atomic(table, copy.with_suffix(".parquet"), ".tmp")
    seal_ms = (time.perf_counter() - start) * 1000
    stop.set()
    thread.join()
    shutil.rmtree(copy.parent)
    return seal_ms, max(lags)


def measure(read_open, segment: Path, repeats: int) -> dict:
    runs = np.array([seal_once(read_open, segment) for _ in range(repeats)])
    return {
        "seal_ms": {"median": float(np.median(runs[:, 0])), "max": float(runs[:, 0].max())},
        "probe_overshoot_ms": {"median": float(np.median(runs[:, 1])), "max": float(runs[:, 1].max())},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", default="85155c9", help="the commit before the change")
    parser.add_argument("--appends", type=int, default=9000, help="batches in the segment")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "seal_cost.json")
    args = parser.parse_args(argv)

    from recstack import event_log_format

    old = module_from(file_at(args.before, "recstack/event_log_format.py"), "format_before")
    segment = build_segment(args.appends)
    results = {
        "before": measure(old.read_open, segment, args.repeats),
        "after": measure(event_log_format.read_open, segment, args.repeats),
    }
    shutil.rmtree(segment.parent)
    command = " ".join(["benchmarks/seal_cost.py", *(argv or sys.argv[1:])])
    write_results("seal_cost", args.before, results, args.out, command=command,
                  appends=args.appends, repeats=args.repeats)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
