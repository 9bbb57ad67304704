"""Where a replica's time goes: request stages, event-loop lag, GC pauses and disk work.

Each is a Prometheus histogram (serving/metrics.py), always on: a timer costs about a
microsecond. For a soak test, set RECSTACK_STALL_LOG to a folder: every observation of at
least RECSTACK_STALL_MS (default 5 ms) is also appended, with its wall-clock time, to
`stalls-<pid>.jsonl` there, so the load test can line stalls up with its per-second p99
(benchmarks/load_test.py --stall-log). Ray replicas inherit the variable from `recstack serve`.

    with stage("rank"): ...            # a request stage
    watch_event_loop()                 # from inside the serving loop (once per process)
    watch_gc()                         # once per process
"""

import asyncio
import gc
import json
import os
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from recstack.serving import metrics

STALL_LOG_ENV, STALL_MS_ENV = "RECSTACK_STALL_LOG", "RECSTACK_STALL_MS"
LOOP_INTERVAL_S = 0.05  # the lag probe's period: 20 wake-ups/s


class _StallLog:
    """Appends observations over a threshold to this process's JSON-lines file."""

    def __init__(self) -> None:
        folder = os.environ.get(STALL_LOG_ENV)
        self.threshold_s = float(os.environ.get(STALL_MS_ENV, "5")) / 1000
        self._file = None
        self._lock = threading.Lock()
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self._file = open(Path(folder) / f"stalls-{os.getpid()}.jsonl", "a", buffering=1)

    def record(self, kind: str, seconds: float) -> None:
        if self._file is None or seconds < self.threshold_s:
            return
        line = json.dumps({"t": time.time(), "pid": os.getpid(), "kind": kind, "ms": seconds * 1e3})
        with self._lock:
            self._file.write(line + "\n")


_stalls: tuple[int, _StallLog] | None = None  # (pid, log): a forked child opens its own


def _log() -> _StallLog:
    global _stalls
    if _stalls is None or _stalls[0] != os.getpid():
        _stalls = (os.getpid(), _StallLog())
    return _stalls[1]


def observe(histogram, kind: str, seconds: float) -> None:
    histogram.observe(seconds)
    _log().record(kind, seconds)


@contextmanager
def stage(name: str):
    """Time a request stage into recstack_stage_seconds{stage=name}."""
    start = time.perf_counter()
    try:
        yield
    finally:
        observe(metrics.STAGE.labels(name), f"stage:{name}", time.perf_counter() - start)


def disk(op: str, seconds: float) -> None:
    observe(metrics.DISK.labels(op), f"disk:{op}", seconds)


_probes: dict[int, asyncio.Task] = {}  # id(loop) -> its probe (kept: a task needs a reference)


def watch_event_loop() -> None:
    """Start the lag probe on the running loop (once per loop): a timer that should fire every
    LOOP_INTERVAL_S; how late it fires is time the loop spent blocked."""
    loop = asyncio.get_running_loop()
    if id(loop) in _probes:
        return

    async def probe() -> None:  # perf_counter: uvloop's loop.time() has 1 ms resolution
        while True:
            start = time.perf_counter()
            await asyncio.sleep(LOOP_INTERVAL_S)
            lag = max(0.0, time.perf_counter() - start - LOOP_INTERVAL_S)
            observe(metrics.LOOP_LAG, "loop_lag", lag)
            record_gc_pauses()

    _probes[id(loop)] = loop.create_task(probe(), name="recstack-loop-lag")


_gc_started: dict[int, float] = {}
# Pauses wait here until the event-loop lag probe records them (record_gc_pauses): a collection
# can start inside any allocation, also one made while this thread holds a lock that recording
# takes (prometheus_client's one lock in multiprocess mode, the stall log's), and taking it again
# from the callback would deadlock the thread. deque.append takes no lock of ours.
_gc_pauses: deque[tuple[str, float]] = deque(maxlen=10_000)


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started[threading.get_ident()] = time.perf_counter()
        return
    start = _gc_started.pop(threading.get_ident(), None)
    if start is not None:
        _gc_pauses.append((str(info.get("generation")), time.perf_counter() - start))


def record_gc_pauses() -> None:
    """Observe the GC pauses noted since the last call (outside any collection)."""
    while _gc_pauses:
        generation, pause = _gc_pauses.popleft()
        observe(metrics.GC_PAUSE.labels(generation), f"gc{generation}", pause)


def watch_gc() -> None:
    """Time every garbage collection of this process (once; later calls do nothing)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)
