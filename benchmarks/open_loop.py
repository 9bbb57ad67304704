"""Open-loop HTTP load: requests sent on a fixed schedule, latency from the scheduled time.

Request i is sent at start + i / rate whatever the server does, and its latency is measured
from that *scheduled* time, so a stalled server (or a client that fell behind) shows up as
latency instead of silently lowering the load (no coordinated omission). One asyncio loop,
one aiohttp connection pool. Requests scheduled during the warm-up are sent but not counted.

No Python load tool holds a fixed arrival rate this way: Locust's users are a closed loop
(each waits for its response), and k6 / wrk2 / vegeta are separate binaries that cannot draw
requests from a recstack dataset. So the loop is ours; HTTP is aiohttp's.

Used by benchmarks/load_test.py (the load-test CLI).
"""

import asyncio
import ipaddress
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import numpy as np

PERCENTILES = {"p50": 50, "p90": 90, "p99": 99, "p99.9": 99.9}
EXCEPTION = 0  # status recorded for a request that got no HTTP response


@dataclass(frozen=True)
class Call:
    """One HTTP request of the load: `endpoint` labels it in the results."""

    endpoint: str
    method: str
    path: str  # appended to the base URL, e.g. "/v1/recommend"
    body: dict | None = None


@dataclass
class Timeline:
    """Per-request records of one run, measured requests only (warm-up dropped).

    Arrays have one entry per request, in schedule order.
    """

    endpoints: list[str]  # endpoint label by code
    endpoint: np.ndarray  # [n] int, index into `endpoints`
    scheduled_s: np.ndarray  # [n] float, seconds from the start of the measured window
    latency_ms: np.ndarray  # [n] float, NaN where the request failed
    status: np.ndarray  # [n] int, HTTP status, EXCEPTION (0) when none came back
    exceptions: Counter = field(default_factory=Counter)  # (endpoint, exception name) -> n
    fallbacks: Counter = field(default_factory=Counter)  # (endpoint, fallback or "null") -> n
    arms: Counter = field(default_factory=Counter)  # (endpoint, arm) -> n
    send_lag_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [n] client lateness
    measured_s: float = 0.0  # from the first measured schedule to the last response
    window_start_unix: float = 0.0  # wall-clock time of the measured window's second 0
    client_cpu_s: float = 0.0
    warmup: dict = field(default_factory=dict)


def check_loopback(url: str) -> None:
    """Raise ValueError unless every address `url`'s host resolves to is a loopback one."""
    host = urlsplit(url).hostname
    if host is None:
        raise ValueError(f"{url!r} has no host; use e.g. http://127.0.0.1:8000")
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:  # a name: resolve it
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError as exc:
            raise ValueError(f"cannot resolve {host!r}: {exc}") from None
        addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
    if not all(address.is_loopback for address in addresses):
        raise ValueError(
            f"{host} is not a loopback address; load tests target this machine only "
            "(pass --allow-remote to load a service you run elsewhere)"
        )


def summarise(latency_ms: np.ndarray) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/max/mean of latencies in ms (None for all without samples)."""
    if latency_ms.size == 0:
        return dict.fromkeys([*PERCENTILES, "max", "mean"])
    summary = {name: float(np.percentile(latency_ms, q)) for name, q in PERCENTILES.items()}
    return summary | {"max": float(latency_ms.max()), "mean": float(latency_ms.mean())}


async def open_loop(
    base_url: str,
    rate: float,
    duration_s: float,
    warmup_s: float,
    make_call: Callable[[int], Call],
    headers: dict[str, str] | None = None,
    pool_limit: int = 256,
    timeout_s: float = 10.0,
) -> Timeline:
    """Send `make_call(i)` to `base_url` at `rate` requests/s for warmup_s + duration_s.

    A 2xx response counts as ok when its body is JSON (else it is an exception
    "InvalidJSON"); its `fallback` and `arm` fields, when present, are tallied.
    client_cpu_s is this whole process's CPU time (all threads) while the loop ran.
    """
    n_warmup, n_total = round(rate * warmup_s), round(rate * (warmup_s + duration_s))
    base_url = base_url.rstrip("/")
    endpoints: dict[str, int] = {}
    endpoint = np.zeros(n_total, dtype=np.int16)
    latency_ms = np.full(n_total, np.nan)
    status = np.full(n_total, EXCEPTION, dtype=np.int16)
    send_lag_ms = np.zeros(n_total)
    finished_at = np.zeros(n_total)
    exceptions: Counter = Counter()
    fallbacks: Counter = Counter()
    arms: Counter = Counter()

    async def send(session: aiohttp.ClientSession, i: int, scheduled: float) -> None:
        call = make_call(i)
        endpoint[i] = endpoints.setdefault(call.endpoint, len(endpoints))
        send_lag_ms[i] = (time.perf_counter() - scheduled) * 1e3
        body = failure = None
        try:
            async with session.request(call.method, base_url + call.path, json=call.body) as r:
                status[i] = r.status
                if 200 <= r.status < 300:
                    body = await r.json(content_type=None)
                else:
                    await r.read()
        except Exception as exc:  # counted, never fatal: the results say what went wrong
            status[i], failure = EXCEPTION, type(exc).__name__
        finished_at[i] = time.perf_counter()
        if failure is None and 200 <= status[i] < 300 and body is None:
            status[i], failure = EXCEPTION, "InvalidJSON"
        if i < n_warmup:
            return
        if failure is not None:
            exceptions[call.endpoint, failure] += 1
        elif 200 <= status[i] < 300:
            latency_ms[i] = (finished_at[i] - scheduled) * 1e3
            if isinstance(body, dict):
                if "fallback" in body:
                    fallbacks[call.endpoint, str(body["fallback"] or "null")] += 1
                if "arm" in body:
                    arms[call.endpoint, str(body["arm"])] += 1

    connector = aiohttp.TCPConnector(limit=pool_limit)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    cpu_started = time.process_time()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as s:
        tasks = set()
        started = time.perf_counter()
        for i in range(n_total):
            scheduled = started + i / rate
            await asyncio.sleep(max(scheduled - time.perf_counter(), 0))  # 0: yield, catch up
            task = asyncio.create_task(send(s, i, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    cpu_s = time.process_time() - cpu_started

    window_start = started + n_warmup / rate
    window_start_unix = time.time() - (time.perf_counter() - window_start)
    measured = slice(n_warmup, n_total)
    last = float(finished_at[measured].max(initial=window_start))
    warm_ok = int(((status[:n_warmup] >= 200) & (status[:n_warmup] < 300)).sum())
    return Timeline(
        endpoints=list(endpoints),
        endpoint=endpoint[measured],
        scheduled_s=np.arange(n_warmup, n_total) / rate - n_warmup / rate,
        latency_ms=latency_ms[measured],
        status=status[measured],
        exceptions=exceptions,
        fallbacks=fallbacks,
        arms=arms,
        send_lag_ms=send_lag_ms[measured],
        measured_s=max(last - window_start, 1e-9),
        window_start_unix=window_start_unix,
        client_cpu_s=cpu_s,
        warmup={"sent": n_warmup, "ok": warm_ok},
    )


def account(timeline: Timeline, endpoint: str | None = None) -> dict:
    """Counts, throughput and latency percentiles of one endpoint (None: all requests).

    sent == ok + errors always; errors split into HTTP statuses and exceptions.
    """
    if endpoint is None:
        mask = np.ones(timeline.status.size, dtype=bool)
    elif endpoint in timeline.endpoints:
        mask = timeline.endpoint == timeline.endpoints.index(endpoint)
    else:
        mask = np.zeros(timeline.status.size, dtype=bool)
    status = timeline.status[mask]
    ok = (status >= 200) & (status < 300)
    http_errors = Counter(str(s) for s in status[~ok & (status != EXCEPTION)].tolist())

    def tally(counter: Counter) -> dict[str, int]:  # (endpoint, value) -> n, for this endpoint
        out = Counter()
        for (name, value), n in counter.items():
            if endpoint is None or name == endpoint:
                out[value] += n
        return dict(out)

    n_ok = int(ok.sum())
    return {
        "sent": int(mask.sum()),
        "ok": n_ok,
        "errors": int((~ok).sum()),
        "throughput_rps": n_ok / timeline.measured_s,
        "latency_ms": summarise(timeline.latency_ms[mask][ok]),
        "errors_by_status": dict(http_errors),
        "errors_by_exception": tally(timeline.exceptions),
        "fallbacks": tally(timeline.fallbacks),
        "arms": tally(timeline.arms),
    }


def per_second(timeline: Timeline) -> list[dict]:
    """Requests, errors and latency p50/p99 by second of the measured window."""
    second = np.floor(timeline.scheduled_s).astype(int)
    rows = []
    for s in np.unique(second):
        latency = timeline.latency_ms[second == s]
        ok = latency[~np.isnan(latency)]
        rows.append(
            {
                "second": int(s),
                "sent": int(latency.size),
                "errors": int(latency.size - ok.size),
                "p50_ms": float(np.percentile(ok, 50)) if ok.size else None,
                "p99_ms": float(np.percentile(ok, 99)) if ok.size else None,
            }
        )
    return rows


def run_open_loop(
    base_url: str,
    rate: float,
    duration_s: float,
    warmup_s: float,
    make_call: Callable[[int], Call],
    allow_remote: bool = False,
    **options,
) -> Timeline:
    """`open_loop` in a fresh asyncio loop, after checking that `base_url` is loopback."""
    if not allow_remote:
        check_loopback(base_url)
    return asyncio.run(open_loop(base_url, rate, duration_s, warmup_s, make_call, **options))
