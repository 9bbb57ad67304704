"""benchmarks/open_loop.py and load_test.py against tiny aiohttp servers run in a thread of the test."""

import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the scripts import each other by module name
import load_test  # noqa: E402
import open_loop as bench  # noqa: E402
from open_loop import Call  # noqa: E402


class Server:
    """A stand-in recstack API on its own event loop in a thread: `handler(n, request)`
    answers /v1/recommend, /v1/events and /v1/similar/{id} (n counts those requests from 0);
    GET /healthz is always 200. Records each call's (path, body, Authorization header)."""

    def __init__(self, handler):
        self.handler, self.seen = handler, []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        n = len(self.seen)
        body = await request.json() if request.method == "POST" else None
        self.seen.append((request.path, body, request.headers.get("Authorization")))
        return await self.handler(n, request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_post("/v1/recommend", self._handle)
        app.router.add_post("/v1/events", self._handle)
        app.router.add_get("/v1/similar/{item_id}", self._handle)
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
    if request.path == "/v1/events":
        return web.json_response({"accepted": 1}, status=202)
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


def fail_after(n_ok: int):
    """Requests after the first `n_ok` (preflight included) all get 500."""

    async def handler(n: int, request: web.Request) -> web.Response:
        return await quick(n, request) if n < n_ok else web.Response(status=500)

    return handler


def call(i: int) -> Call:
    return Call("recommend", "POST", "/v1/recommend", {"user_id": str(i), "k": 10})


def check_percentiles(latency: dict) -> None:
    values = [latency[name] for name in ("p50", "p90", "p99", "p99.9", "max")]
    assert values == sorted(values) and values[0] > 0, latency


def test_accounting_errors_and_tallies():
    with Server(flaky) as server:
        timeline = bench.run_open_loop(
            server.url, 100, duration_s=1.5, warmup_s=0.3, make_call=call
        )
    result = bench.account(timeline)
    assert timeline.warmup["sent"] == 30 and result["sent"] == 150
    assert result["sent"] == result["ok"] + result["errors"]
    assert result["errors_by_exception"] == {}
    assert result["errors_by_status"] == {"500": 30}  # i = 30, 35, …, 175 of 180 requests
    assert result["errors"] == 30 and result["ok"] == 120
    assert sum(result["arms"].values()) == sum(result["fallbacks"].values()) == 120
    assert set(result["arms"]) == {"a", "b"}
    assert result["fallbacks"]["cold_start"] > 0 and result["fallbacks"]["null"] > 0
    check_percentiles(result["latency_ms"])
    assert 50 < result["throughput_rps"] < 110
    assert timeline.client_cpu_s > 0 and timeline.send_lag_ms.max() >= 0
    assert sorted(server.seen, key=lambda s: int(s[1]["user_id"])) == [
        ("/v1/recommend", call(i).body, None) for i in range(180)
    ]
    assert bench.account(timeline, "similar")["sent"] == 0


def test_latency_counts_from_the_scheduled_send_time():
    """One 200 ms server stall at 100 rps: with one connection, the ~20 requests scheduled
    during it wait in the client's pool; measured from their schedule they are slow."""
    with Server(stall_once_at(100)) as server:
        timeline = bench.run_open_loop(server.url, 100, 2, 0.2, call, pool_limit=1)
    result = bench.account(timeline)
    assert result["ok"] == result["sent"] == 200
    latency = result["latency_ms"]
    check_percentiles(latency)
    assert latency["p99"] >= 100 and latency["max"] >= 180, latency
    assert latency["p50"] < 50, latency


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny prepared dataset: users 11..13 (13 the most active), items 100..104."""
    root = tmp_path_factory.mktemp("dataset")
    pq.write_table(
        pa.table({"user_idx": [0, 1, 2], "user_id": [11, 12, 13]}), root / "users.parquet"
    )
    items = {"item_idx": [1, 2, 3, 4, 5], "item_id": [100, 101, 102, 103, 104]}
    pq.write_table(pa.table(items), root / "items.parquet")
    log = {"user_idx": [0, 1, 2, 2, 2, 2, 2, 2], "item_idx": [1, 2, 3, 3, 3, 3, 4, 5]}
    pq.write_table(pa.table(log), root / "interactions.parquet")
    return root


def test_a_server_that_is_down_is_reported_not_fatal(dataset, tmp_path, capsys):
    out = tmp_path / "down.json"
    argv = ["--url", f"http://127.0.0.1:{free_port()}", "--dataset", str(dataset)]
    assert load_test.main([*argv, "--duration", "0.4", "--out", str(out)]) == 1
    assert json.loads(out.read_text())["error"].startswith("no recstack service answers")
    err = capsys.readouterr().err
    assert "recstack serve --config" in err and "Traceback" not in err


def test_a_refused_key_is_reported(dataset, tmp_path, capsys):
    async def refuse(n, request):
        return web.json_response({"error": "unknown API key"}, status=401)

    with Server(refuse) as server:
        argv = ["--url", server.url, "--dataset", str(dataset), "--api-key", "wrong"]
        assert load_test.main([*argv, "--out", str(tmp_path / "r.json")]) == 1
    assert "refused the API key (401)" in capsys.readouterr().err


def test_fixed_rate_mix_accounting_json_and_plots(dataset, tmp_path, capsys):
    out = tmp_path / "r" / "load.json"
    with Server(quick) as server:
        argv = ["--url", server.url + "/", "--dataset", str(dataset), "--rate", "200"]
        argv += ["--duration", "1.5", "--warmup", "0.2", "--api-key", "s3cret", "--out", str(out)]
        argv += ["--mix", "recommend=0.6,events=0.3,similar=0.1", "--cold", "0.2"]
        assert load_test.main([*argv, "--explain", "0.5"]) == 0
    result = json.loads(out.read_text())
    (step,) = result["steps"]
    overall, endpoints = step["overall"], step["endpoints"]
    assert overall["sent"] == 300 and overall["sent"] == overall["ok"] + overall["errors"]
    assert sum(e["sent"] for e in endpoints.values()) == overall["sent"]
    assert sum(e["ok"] for e in endpoints.values()) == overall["ok"]
    assert 140 < endpoints["recommend"]["sent"] < 220 and 60 < endpoints["events"]["sent"] < 120
    assert endpoints["similar"]["sent"] > 10
    for summary in [overall, *endpoints.values()]:
        check_percentiles(summary["latency_ms"])
    # what the server saw: the preflight call, then warm-up + measured requests
    paths = [path for path, _, _ in server.seen]
    assert len(paths) == 1 + 340 and {a for _, _, a in server.seen} == {"Bearer s3cret"}
    recommends = [body for path, body, _ in server.seen[1:] if path == "/v1/recommend"]
    cold = [b for b in recommends if b["user_id"].startswith("load-cold-")]
    warm = [b["user_id"] for b in recommends if not b["user_id"].startswith("load-cold-")]
    assert 0.1 < len(cold) / len(recommends) < 0.3
    assert warm.count("13") > warm.count("11")  # popularity skew: 13 has 6 of 8 interactions
    assert 0.3 < sum(b["explain"] for b in recommends) / len(recommends) < 0.7
    events = [body["events"][0] for path, body, _ in server.seen if path == "/v1/events"]
    assert {e["type"] for e in events} <= {"view", "click", "purchase"}
    assert {e["item_id"] for e in events} <= {"100", "101", "102", "103", "104"}
    assert all(
        path.split("/")[-1] in {"100", "101", "102", "103", "104"}
        for path in paths
        if path.startswith("/v1/similar/")
    )
    assert step["cpu"]["client_cpu_s"] > 0 and 0 <= step["cpu"]["host_busy_fraction"] <= 1
    assert step["cpu"]["server_cpu_s"] is None  # the server is a thread of this process
    assert step["cpu"]["server_found_by"] == "not found: this process itself listens on the port"
    assert sum(row["sent"] for row in step["timeline"]) == overall["sent"]
    assert all(
        (tmp_path / "r" / name).stat().st_size > 10_000
        for name in ("load_vs_rate.png", "load_over_time.png")
    )
    assert result["config"]["api_key"] == "set" and "s3cret" not in out.read_text()
    assert "300/300 ok" in capsys.readouterr().out


def test_step_mode_reports_the_highest_sustained_rate(dataset, tmp_path, capsys):
    """Steps of 1 s (+0.1 s warm-up) at 50, 100, 200, 400 req/s; the server fails every
    request after its 300th, from the 200 req/s step on: two failed steps in a row end the
    stepping, the highest sustained rate is 100 and the bisection steps (150, 125) fail too.
    The p99 target is loose: errors decide here."""
    out = tmp_path / "step.json"
    with Server(fail_after(300)) as server:
        argv = ["--url", server.url, "--dataset", str(dataset), "--step", "--start-rate", "50"]
        argv += ["--step-factor", "2", "--step-duration", "1", "--warmup", "0.1", "--refine", "2"]
        argv += ["--p99-target", "2000"]
        assert load_test.main([*argv, "--out", str(out), "--no-plots"]) == 0
    result = json.loads(out.read_text())
    assert [s["offered_rps"] for s in result["steps"]] == [50, 100, 200, 400, 150, 125]
    assert [s["sustained"] for s in result["steps"]] == [True, True, False, False, False, False]
    assert result["highest_sustained_rps"] == 100
    assert result["steps"][2]["overall"]["errors_by_status"]["500"] > 0
    assert "highest sustained rate (p99 ≤ 2000 ms, errors ≤ 0.1%): 100" in capsys.readouterr().out


def test_bad_arguments_are_one_line_errors(dataset, capsys):
    cases = [
        (["--url", "http://10.1.2.3:8000"], "not a loopback address"),
        (["--mix", "recommend=0.5,browse=0.5"], "unknown endpoint 'browse'"),
        (["--rate", "0"], "--rate"),
        (["--dataset", "/no/such/dir"], "is not a prepared dataset"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            load_test.main(["--dataset", str(dataset), *argv])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="--allow-remote"):
        bench.run_open_loop("http://192.0.2.1", 10, 1, 0, call)
    bench.check_loopback("http://localhost:8000")
    bench.check_loopback("http://[::1]:8000")


def test_one_failed_step_at_a_low_rate_does_not_end_the_search(dataset):
    """Slow at 50/s (an idle server wakes up slowly), fine at 75 and 112.5, broken above 140:
    the search goes on past the first failure and bisects above the highest sustained rate."""
    args = load_test.parse_args(["--step", "--dataset", str(dataset)])
    args.start_rate, args.step_factor, args.patience, args.refine = 50, 1.5, 2, 2
    ran = []

    def run(rate):
        ran.append(rate)
        return {"offered_rps": rate, "sustained": 50 < rate <= 140}

    steps = load_test.step_rates(args, run)
    assert ran == [50, 75, 112.5, 168.75, 253.125, 140.6, 126.5]
    assert max(s["offered_rps"] for s in steps if s["sustained"]) == 126.5
