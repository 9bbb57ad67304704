"""What the loop writes down (docs/architecture.md §9):

- `<loop_dir>/runs/<run>/state.json`: each finished step's result, written atomically when the
  step ends. A killed retrain resumes the unfinished run and skips its finished steps.
- `<loop_dir>/audit.jsonl`: one record per decision (promoted, refused, rolled back, a manual
  rollback), appended and fsynced, never rewritten.
"""

import json
import os
import time
from pathlib import Path

from recstack.durable import fsync_dir

AUDIT_FILE = "audit.jsonl"
STATE_FILE = "state.json"
RUNS = "runs"


def _write_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


class RunState:
    """One retrain run's directory and the results of its finished steps."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.id = directory.name
        path = directory / STATE_FILE
        self.data = json.loads(path.read_text()) if path.is_file() else {"steps": {}}

    def result(self, step: str) -> dict | None:
        return self.data["steps"].get(step)

    def record(self, step: str, result: dict) -> dict:
        self.data["steps"][step] = result
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.dir / STATE_FILE, self.data)
        return result

    @property
    def finished(self) -> bool:
        return "decision" in self.data["steps"]


def open_run(loop_dir: Path) -> RunState:
    """The unfinished run to resume, else a new one named by the UTC time."""
    runs = loop_dir / RUNS
    if runs.is_dir():
        for directory in sorted(runs.iterdir(), reverse=True):
            if directory.is_dir() and not RunState(directory).finished:
                return RunState(directory)
    name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    while (runs / name).exists():  # two runs within a second
        name = f"{name}-{time.time_ns() % 10_000:04d}"
    return RunState(runs / name)


def append_audit(loop_dir: Path, record: dict) -> None:
    loop_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str)
    with open(loop_dir / AUDIT_FILE, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_audit(loop_dir: Path) -> list[dict]:
    path = loop_dir / AUDIT_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:  # a torn last line after a crash: say so, keep the rest
                records.append({"decision": "unreadable", "line": number})
    return records
