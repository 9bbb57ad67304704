"""The server's stalls during a load run: the JSON lines serving/timing.py writes when the
service runs with RECSTACK_STALL_LOG=<dir> (every stage, event-loop lag, GC pause or disk
operation of at least RECSTACK_STALL_MS, default 5 ms, with its wall-clock time and pid).

`stalls_in_window` reads them for one measured window and returns a summary by kind (count,
total and max ms) and the worst stall of each second, so a p99 spike can be lined up with
what the server was doing in that second (benchmarks/load_test.py --stall-log).
"""

import json
from collections import defaultdict
from pathlib import Path


def read_stalls(folder: Path, start_unix: float, end_unix: float) -> list[dict]:
    """Every stall record in `folder` between the two wall-clock times, in time order."""
    records = []
    for path in sorted(Path(folder).glob("stalls-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a killed process
                continue
            if start_unix <= record.get("t", 0) <= end_unix:
                records.append(record)
    return sorted(records, key=lambda r: r["t"])


def stalls_in_window(folder: Path, start_unix: float, seconds: float) -> dict:
    """{"by_kind": {kind: {count, total_ms, max_ms}}, "per_second": [{second, kind, ms}]}"""
    records = read_stalls(folder, start_unix, start_unix + seconds)
    by_kind: dict[str, dict] = defaultdict(lambda: {"count": 0, "total_ms": 0.0, "max_ms": 0.0})
    worst: dict[int, dict] = {}
    for record in records:
        kind, ms = record["kind"], float(record["ms"])
        summary = by_kind[kind]
        summary["count"] += 1
        summary["total_ms"] += ms
        summary["max_ms"] = max(summary["max_ms"], ms)
        second = int(record["t"] - start_unix)
        if ms > worst.get(second, {}).get("ms", 0.0):
            worst[second] = {"second": second, "kind": kind, "ms": ms, "pid": record.get("pid")}
    return {
        "records": len(records),
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]["total_ms"])),
        "per_second": [worst[s] for s in sorted(worst)],
    }
