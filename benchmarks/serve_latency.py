"""Open-loop latency of a running recstack service: fixed arrival rate, percentiles, errors.

    .venv/bin/python benchmarks/serve_latency.py --users-from data/ml-100k/users.parquet
    .venv/bin/python benchmarks/serve_latency.py --url http://127.0.0.1:8000 --users 943 \\
        --rate 500 --duration 60 --out benchmarks/results/serve_latency_500.json

Requests are sent on a fixed schedule (request i at start + i / rate) whatever the server
does, and each latency is measured from the request's *scheduled* send time, so a stalled
server (or a client that fell behind) shows up as latency instead of silently lowering the
load (no coordinated omission). One asyncio loop, one aiohttp connection pool. Requests
scheduled during the warm-up are sent but not counted. Each request is
`POST {url}/v1/recommend {"user_id": …, "k": …}` with `Authorization: Bearer $RECSTACK_API_KEY`.
Only loopback addresses are targeted unless --allow-remote is given. Errors (HTTP status or
exception) are counted in the JSON, never fatal; the exit status is 1 if nothing succeeded.
"""

import argparse
import asyncio
import ipaddress
import json
import os
import platform
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import numpy as np

RESULTS = Path(__file__).parent / "results"
PERCENTILES = {"p50": 50, "p90": 90, "p99": 99, "p99.9": 99.9}


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
    url: str,
    rate: float,
    duration_s: float,
    warmup_s: float,
    make_request: Callable[[int], dict],
    headers: dict[str, str] | None = None,
    pool_limit: int = 256,
    timeout_s: float = 10.0,
) -> dict:
    """POST `make_request(i)` as JSON to `url` at `rate` requests/s; latencies in ms.

    Requests scheduled in the first `warmup_s` seconds are sent but not counted. 2xx
    responses must be JSON (else counted under errors_by_exception); their `fallback` and
    `arm` fields are tallied. Latency percentiles cover the 2xx responses. client_cpu_s is
    the whole process's CPU time (all threads) while the loop ran.
    """
    n_warmup, n_total = round(rate * warmup_s), round(rate * (warmup_s + duration_s))
    latency_ms = np.full(n_total, np.nan)
    send_lag_ms = np.zeros(n_total)
    finished_at = np.zeros(n_total)
    errors_by_status: Counter[str] = Counter()
    errors_by_exception: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    arms: Counter[str] = Counter()
    warmup_ok = 0

    async def send(session: aiohttp.ClientSession, i: int, scheduled: float) -> None:
        nonlocal warmup_ok
        send_lag_ms[i] = (time.perf_counter() - scheduled) * 1e3
        status = body = failure = None
        try:
            async with session.post(url, json=make_request(i)) as response:
                status = response.status
                if 200 <= status < 300:
                    body = await response.json()
                else:
                    await response.read()
        except Exception as exc:  # counted, never fatal: the JSON says what went wrong
            failure = type(exc).__name__
        finished_at[i] = time.perf_counter()
        if i < n_warmup:
            warmup_ok += body is not None
        elif failure is not None:
            errors_by_exception[failure] += 1
        elif body is None:
            errors_by_status[str(status)] += 1
        else:
            latency_ms[i] = (finished_at[i] - scheduled) * 1e3
            if isinstance(body, dict):
                fallbacks[str(body.get("fallback") or "null")] += 1
                arms[str(body.get("arm"))] += 1

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

    measured = slice(n_warmup, n_total)
    ok = latency_ms[measured][~np.isnan(latency_ms[measured])]
    sent = n_total - n_warmup
    window_start = started + n_warmup / rate
    window_s = max(float(finished_at[measured].max(initial=window_start)) - window_start, 1e-9)
    n_errors = errors_by_status.total() + errors_by_exception.total()
    return {
        "offered_rps": rate,
        "sent": sent,
        "ok": int(ok.size),
        "errors": n_errors,
        "throughput_rps": ok.size / window_s,
        "measured_s": window_s,
        "latency_ms": summarise(ok),
        "errors_by_status": dict(errors_by_status),
        "errors_by_exception": dict(errors_by_exception),
        "fallbacks": dict(fallbacks),
        "arms": dict(arms),
        "send_lag_ms": {  # how late the client started requests (if large, the client is the limit)
            "p99": float(np.percentile(send_lag_ms[measured], 99)) if sent else None,
            "max": float(send_lag_ms[measured].max()) if sent else None,
        },
        "warmup": {"sent": n_warmup, "ok": warmup_ok},
        "client_cpu_s": cpu_s,
    }


def run_open_loop(
    url: str,
    rate: float,
    duration_s: float,
    warmup_s: float,
    make_request: Callable[[int], dict],
    allow_remote: bool = False,
    **options,
) -> dict:
    """`open_loop` in a fresh asyncio loop, after checking that `url` is a loopback address."""
    if not allow_remote:
        check_loopback(url)
    return asyncio.run(open_loop(url, rate, duration_s, warmup_s, make_request, **options))


def load_user_ids(users_from: Path | None, users: int | None) -> list[str]:
    """User ids as strings: column user_id of a Parquet file, or "1".."N"."""
    if users_from is None:
        return [str(u) for u in range(1, (users or 0) + 1)]
    import pyarrow.parquet as pq

    return [str(u) for u in pq.read_table(users_from, columns=["user_id"])["user_id"].to_pylist()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    users = parser.add_mutually_exclusive_group(required=True)
    users.add_argument("--users-from", type=Path, help="Parquet file with a user_id column")
    users.add_argument("--users", type=int, help='use user ids "1".."N"')
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds sent, not counted")
    parser.add_argument("--k", type=int, default=10, help="items per recommendation")
    parser.add_argument("--api-key", default=os.environ.get("RECSTACK_API_KEY"))
    parser.add_argument("--pool-limit", type=int, default=256, help="max open connections")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request limit, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-remote", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_latency.json")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.warmup < 0:
        parser.error("--rate and --duration must be > 0, --warmup >= 0")
    if not args.allow_remote:
        try:
            check_loopback(args.url)
        except ValueError as exc:
            parser.error(str(exc))
    user_ids = load_user_ids(args.users_from, args.users)
    if not user_ids:
        parser.error("no user ids: --users must be >= 1, --users-from needs rows")
    rng = random.Random(args.seed)
    draws = rng.choices(user_ids, k=round(args.rate * (args.warmup + args.duration)) + 1)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    if headers is None:
        print("note: no --api-key or RECSTACK_API_KEY; sending no Authorization header")

    result = run_open_loop(
        args.url.rstrip("/") + "/v1/recommend",
        args.rate,
        args.duration,
        args.warmup,
        lambda i: {"user_id": draws[i], "k": args.k},
        allow_remote=True,  # checked above
        headers=headers,
        pool_limit=args.pool_limit,
        timeout_s=args.timeout,
    )
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config["api_key"] = "set" if args.api_key else None
    config["distinct_users"] = len(user_ids)
    document = {
        "benchmark": "serve_latency",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "aiohttp": aiohttp.__version__},
        "config": config,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    lat = result["latency_ms"]
    shown = " ".join(
        f"{name} {lat[name]:.1f}" if lat[name] is not None else f"{name} –"
        for name in ("p50", "p99", "max")
    )
    print(
        f"{result['ok']}/{result['sent']} ok at {result['throughput_rps']:.0f}/{args.rate:.0f} rps, "
        f"latency ms: {shown}, errors {result['errors']} → {args.out}"
    )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
