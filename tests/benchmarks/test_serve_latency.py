"""benchmarks/serve_latency.py against tiny aiohttp servers run in a thread of the test."""

import asyncio
import importlib.util
import json
import socket
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_latency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serve_latency", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Server:
    """`POST /v1/recommend` served by `handler(n, request)` (n counts requests from 0) on its
    own event loop in a thread; records each request's body and Authorization header."""

    def __init__(self, handler):
        self.handler, self.seen = handler, []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        n = len(self.seen)
        self.seen.append((await request.json(), request.headers.get("Authorization")))
        return await self.handler(n, request)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/recommend", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def __enter__(self) -> "Server":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def quick(n: int, request: web.Request) -> web.Response:
    await asyncio.sleep(0.0015)
    return web.json_response({"items": [], "arm": "a", "fallback": None})


async def flaky(n: int, request: web.Request) -> web.Response:
    """Request i (its user_id) fails with 500 if i % 5 == 0; a cold-start fallback if i % 7 == 0."""
    await asyncio.sleep(0.001)
    n = int((await request.json())["user_id"])  # by request, not arrival order
    if n % 5 == 0:
        return web.Response(status=500, text="boom")
    fallback = "cold_start" if n % 7 == 0 else None
    return web.json_response({"items": [], "arm": "b" if n % 2 else "a", "fallback": fallback})


def stall_once_at(request_number: int):
    async def handler(n: int, request: web.Request) -> web.Response:
        if n == request_number:
            time.sleep(0.2)  # blocks the server's loop: every request behind it waits
        return await quick(n, request)

    return handler


def body(i: int) -> dict:
    return {"user_id": str(i), "k": 10}


def check_percentiles(latency: dict) -> None:
    values = [latency[name] for name in ("p50", "p90", "p99", "p99.9", "max")]
    assert values == sorted(values) and values[0] > 0, latency


def test_accounting_errors_and_tallies(bench):
    with Server(flaky) as server:
        result = bench.run_open_loop(
            server.url + "/v1/recommend", rate=100, duration_s=1.5, warmup_s=0.3, make_request=body
        )
    assert result["warmup"]["sent"] == 30 and result["sent"] == 150
    assert result["sent"] == result["ok"] + result["errors"]
    assert result["errors_by_exception"] == {}
    assert result["errors_by_status"] == {"500": 30}  # i = 30, 35, …, 175 of 180 requests
    assert result["errors"] == 30 and result["ok"] == 120
    assert sum(result["arms"].values()) == sum(result["fallbacks"].values()) == 120
    assert set(result["arms"]) == {"a", "b"}
    assert result["fallbacks"]["cold_start"] > 0 and result["fallbacks"]["null"] > 0
    check_percentiles(result["latency_ms"])
    assert 50 < result["throughput_rps"] < 110
    assert result["client_cpu_s"] > 0 and result["send_lag_ms"]["max"] >= 0
    assert sorted(server.seen, key=lambda s: int(s[0]["user_id"])) == [
        (body(i), None) for i in range(180)
    ]


def test_latency_counts_from_the_scheduled_send_time(bench):
    """One 200 ms server stall at 100 rps: with one connection, the ~20 requests scheduled
    during it wait in the client's pool; measured from their schedule they are slow."""
    with Server(stall_once_at(100)) as server:
        result = bench.run_open_loop(
            server.url + "/v1/recommend",
            rate=100,
            duration_s=2,
            warmup_s=0.2,
            make_request=body,
            pool_limit=1,
        )
    assert result["ok"] == result["sent"] == 200
    latency = result["latency_ms"]
    check_percentiles(latency)
    assert latency["p99"] >= 100 and latency["max"] >= 180, latency
    assert latency["p50"] < 50, latency


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_that_is_down_is_reported_not_fatal(bench, tmp_path, capsys):
    out = tmp_path / "down.json"
    argv = ["--url", f"http://127.0.0.1:{free_port()}", "--users", "3", "--rate", "50"]
    argv += ["--duration", "0.4", "--warmup", "0.1", "--out", str(out)]
    assert bench.main(argv) == 1
    result = json.loads(out.read_text())
    assert result["ok"] == 0 and result["errors"] == result["sent"] == 20
    assert sum(result["errors_by_exception"].values()) == 20, result["errors_by_exception"]
    assert set(result["latency_ms"].values()) == {None} and result["throughput_rps"] == 0
    assert "0/20 ok" in capsys.readouterr().out


def test_main_sends_users_and_key_and_writes_json(bench, tmp_path, capsys):
    users = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_idx": [0, 1, 2], "user_id": [11, 12, 13]}), users)
    out = tmp_path / "r" / "latency.json"
    with Server(quick) as server:
        argv = ["--url", server.url + "/", "--users-from", str(users), "--rate", "50"]
        argv += ["--duration", "0.4", "--warmup", "0.1", "--api-key", "s3cret", "--out", str(out)]
        assert bench.main(argv) == 0
    assert {b["user_id"] for b, _ in server.seen} <= {"11", "12", "13"}
    assert {b["k"] for b, _ in server.seen} == {10}
    assert {auth for _, auth in server.seen} == {"Bearer s3cret"}
    result = json.loads(out.read_text())
    assert result["ok"] == result["sent"] == 20 and result["offered_rps"] == 50
    assert result["arms"] == {"a": 20} and result["fallbacks"] == {"null": 20}
    assert {"cpu_count", "platform"} <= set(result["machine"])
    assert result["config"]["api_key"] == "set" and "s3cret" not in out.read_text()
    assert result["config"]["distinct_users"] == 3
    assert "20/20 ok" in capsys.readouterr().out


def test_only_loopback_targets_unless_allowed(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--url", "http://10.1.2.3:8000", "--users", "3"])
    assert exit_info.value.code == 2
    assert "not a loopback address" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--allow-remote"):
        bench.run_open_loop("http://192.0.2.1/v1/recommend", 10, 1, 0, body)
    bench.check_loopback("http://localhost:8000")
    bench.check_loopback("http://[::1]:8000")
