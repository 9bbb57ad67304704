"""The inference benchmark's timing harness and its progress log (stderr).

`interleaved` times several callables in alternating blocks, so that the slow drifts of a
shared VM hit them alike, and records the CPU other processes used meanwhile
(`other_load_cores`); `background_load` sums that up over a run. `best_seconds` is the
best-of timing the hardware probes use.
"""

import gc
import math
import time
from collections.abc import Callable

import numpy as np
import psutil
from rich.console import Console

TIME_BUDGET_S = 1.5  # seconds of timed calls per engine and cell (about; >= ROUNDS calls)
ROUNDS = 5
MIN_LOAD_WINDOW_S = 0.1
log = Console(stderr=True, highlight=False, soft_wrap=True)


def cpu_clock() -> tuple[float, float, float]:
    """(wall s, busy CPU s of the whole machine incl. steal, CPU s of this process)."""
    t, own = psutil.cpu_times(), psutil.Process().cpu_times()
    fields = ("user", "nice", "system", "irq", "softirq", "steal")
    busy = sum(getattr(t, name, 0.0) for name in fields)
    return time.perf_counter(), busy, own.user + own.system


def interleaved(
    calls: dict[str, Callable[[int], object]],
    repeats: int,
    warmup: int,
    rounds: int = ROUNDS,
    budget_s: float = TIME_BUDGET_S,
) -> dict[str, dict]:
    """Time each of `calls` (call(i), i = 0, 1, ...) in `rounds` alternating blocks
    (A x n, B x n, A x n, ...), so that the slow drifts of a shared VM hit them alike.

    After `warmup` untimed calls each, n = ceil(repeats / rounds), cut so that one call's
    blocks fit about `budget_s` (from the warm-up's pace; at least one call per block).
    -> {name: p50/mean/min ms, calls, other_load_cores}: other_load_cores is the CPU used
    meanwhile by other processes (and the hypervisor's steal), in cores, None when the blocks
    took under MIN_LOAD_WINDOW_S in all (too short to tell); well above 0 means the figures
    were taken on a busy machine."""
    pace = {}
    for name, call in calls.items():
        started = time.perf_counter()
        for i in range(warmup):
            call(i)
        pace[name] = (time.perf_counter() - started) / max(warmup, 1)
    ms: dict[str, list[float]] = {name: [] for name in calls}
    other = dict.fromkeys(calls, 0.0)
    wall = dict.fromkeys(calls, 0.0)
    for _ in range(rounds):
        for name, call in calls.items():
            fit = int(budget_s / rounds / max(pace[name], 1e-6))
            n = max(1, min(math.ceil(repeats / rounds), fit))
            before = cpu_clock()
            for i in range(n):
                t = time.perf_counter()
                call(i)
                ms[name].append((time.perf_counter() - t) * 1e3)
            after = cpu_clock()
            wall[name] += after[0] - before[0]
            other[name] += max(0.0, (after[1] - before[1]) - (after[2] - before[2]))
    out = {}
    for name, times in ms.items():
        x = np.asarray(times)
        load = other[name] / wall[name] if wall[name] >= MIN_LOAD_WINDOW_S else None
        out[name] = {"p50_ms": float(np.median(x)), "mean_ms": float(x.mean())}
        out[name] |= {"min_ms": float(x.min()), "calls": x.size, "other_load_cores": load}
    return out


def settle_gc() -> None:
    """Collect, then freeze what survives: the exporter leaves millions of objects whose
    generation-2 rescans otherwise slow every torch call that follows (~50 % at batch 1)."""
    gc.collect()
    gc.freeze()


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def background_load(rows: list[dict], notes: list[str]) -> dict:
    """Max and mean other_load_cores over the timed cells; a note when the machine was busy."""
    loads = [r["other_load_cores"] for r in rows if r["other_load_cores"] is not None]
    load = {"max_other_load_cores": max(loads, default=0.0)}
    load["mean_other_load_cores"] = float(np.mean(loads)) if loads else 0.0
    busy = sum(value > 0.25 for value in loads)
    if busy:
        notes.append(
            f"other processes used > 0.25 cores during {busy} of {len(loads)} timed cells (up "
            f"to {load['max_other_load_cores']:.2f}; other_load_cores per row): those figures "
            "are pessimistic"
        )
        log.print(f"note: {notes[-1]}")
    return load
