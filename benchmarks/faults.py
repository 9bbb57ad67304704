"""The service under faults: open-loop load at a design rate, a fault injected a few seconds in,
the load kept running, and what the clients saw, second by second.

    .venv/bin/python benchmarks/faults.py                            # every scenario, ~20 min
    .venv/bin/python benchmarks/faults.py --only redis_frozen,worker_kill --rate 80
    .venv/bin/python benchmarks/faults.py --only soak --merge        # add the soaks to the JSON

Each scenario starts `recstack serve` (benchmarks/engine_compare.py's configs, engines and
helpers) on a Redis of its own (benchmarks/redis_server.py) with `seed_histories_from` set to
the dataset, sends the realistic mix of benchmarks/load_test.py (80 % recommend, 15 % events,
5 % similar; 5 % of recommend calls for unseen users) open-loop at --rate for --duration
seconds after --warmup, injects its fault --fault-at seconds into the measured window, and
keeps the load running:

    worker_kill       kill -9 one of the 2 uvicorn workers (uvicorn engine)
    replica_kill      kill -9 one of the 2 Ingress replicas (Ray engine, colocated pipeline)
    redis_refused     kill redis-server, start it again --fault-s later on the same port
                      (AOF, fsync always: the data comes back)
    redis_frozen      SIGSTOP redis-server for --fault-s, then SIGCONT
    redis_emptied     FLUSHALL: the histories are gone; does the service re-seed, how soon?
    corrupt_artifact  POST /v1/admin/models with each forged artifact of
                      tests/serving/bad_artifacts.py (NaN embeddings and others, manifest
                      hashes rewritten to match): 400 expected, and no effect on the load
    server_kill       a client posts events with unique request ids at --rate; kill -9 the
                      whole `recstack serve` process group (what of its session is still
                      alive 5 s later is listed as `survivors`, then killed, as a supervisor
                      would), start it again on the same port and state; every event
                      answered 202 must be in the event log
    soak              --soak-rate (200 req/s) for --soak-s (300 s) on each --soak-engines,
                      0 errors expected; per-second p99

The store scenarios and server_kill run on --engine (uvicorn by default). Figures per
scenario (latency in ms from each request's scheduled send time, benchmarks/open_loop.py):
    requests      measured requests; ok (2xx) + errors + client_4xx = requests
    errors        5xx or no response (connection refused or reset, timeout after --timeout s)
    client_4xx    4xx answers, counted apart (none is expected from this load)
    fallbacks     recommend responses by `fallback` kind; fault_fallbacks are those the fault
                  caused: store_unavailable, or cold_start for a user with a seeded history
    bad           errors + fault_fallbacks
    latency_ms    p50/p99/max before, during and after the fault, and outside it (before +
                  after). "during" is the fault (refused, frozen: until the restart / thaw;
                  kills, FLUSHALL, bad uploads: --fault-s from the fault), stretched to the
                  last bad request when that came later
    recovery_s    scheduled send time of the last bad request minus the fault's end (refused,
                  frozen) or its start (the rest); 0 when no request was bad after the fault
                  began (a request sent up to 1 s before it was in flight: it counts as the
                  fault's), null with recovered=false when bad requests lasted to the
                  window's last --settle-s seconds
    timeline      per second: sent, errors, client_4xx, fault_fallbacks, fallback_share (of
                  recommend calls for seeded users), p50_ms, p99_ms
    readiness     GET /readyz (with a models key) every 0.5 s: each change of its answer
server_kill adds acked / lost events (lost must be 0). JSON: --out (default
benchmarks/results/faults.json), with the machine, the commit and the exact command. Needs
redis-server, the dataset (--dataset) and the artifacts the config names (README: train +
export). Scenarios share nothing; run the script alone on the machine (it measures latency).
"""

import argparse
import contextlib
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from engine_compare import ENGINES, Service, free_port, service_config  # noqa: E402
from fault_scenarios import FAULTS  # noqa: E402
from load_mix import Catalogue, Mix  # noqa: E402
from machine_info import machine  # noqa: E402
from open_loop import EXCEPTION, Call, Timeline, per_second, run_open_loop, summarise  # noqa: E402
from redis_server import NoRedis, RedisServer  # noqa: E402

from recstack.errors import RecstackError, first_line  # noqa: E402
from recstack.serving.config import read_serve_config  # noqa: E402
from recstack.serving.event_log import read_events  # noqa: E402
from recstack.serving.ray_runtime import ingress_replicas, listener  # noqa: E402
from recstack.serving.serve_cmd import wait_ready  # noqa: E402

RESULTS = HERE / "results"
SCENARIOS = (*FAULTS, "soak")
ENGINE_OF = {"worker_kill": "uvicorn", "replica_kill": "ray-colocated"}  # the rest: --engine
TIMED = {"redis_refused", "redis_frozen"}  # faults with a duration; the others are instants
MAX_REQUESTS = 32_000  # per fault run: one endpoint label per request (open_loop: int16 codes)
PREFIX = "faults:"  # Redis key prefix of the service
IN_FLIGHT_S = 1.0  # a bad request sent this soon before a fault was in flight: the fault's


class FaultsError(RuntimeError):
    """An expected problem (missing data, a service that does not start): one line, exit 1."""


# --------------------------------------------------------------------------- the service


class FaultService(Service):
    """`recstack serve` of one engine (engine_compare's configs) on a Redis store seeded from
    the dataset, in a process group of its own; it can be killed and started again on the
    same port and state."""

    def __init__(self, engine: str, args, state: Path, redis_url: str, env: dict) -> None:
        source, self.kind = ENGINES[engine]
        source = args.config or REPO / source
        self.engine, self.state = engine, state
        state.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        replicas = 2 if self.kind == "ray" else None  # the fault needs two to kill one
        path = service_config(Path(source), state, self.port, replicas)
        document = yaml.safe_load(path.read_text())
        app_args = document["applications"][0]["args"]
        app_args["store"] = {"kind": "redis", "url": redis_url, "prefix": PREFIX}
        app_args["seed_histories_from"] = str(args.dataset.resolve())
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        self.config = path
        self.command = [sys.executable, "-m", "recstack.cli", "serve", "--config", str(path)]
        if self.kind == "uvicorn":
            self.command += ["--engine", "uvicorn", "--workers", str(args.workers)]
        self.env = {**os.environ, **env}
        self.log_path = state / "serve.log"
        self.process: subprocess.Popen | None = None
        self.start(args.start_timeout)

    def start(self, timeout_s: float) -> float:
        """Start it and wait for /readyz; returns the seconds it took."""
        started = time.monotonic()
        self.log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = started + timeout_s
        while True:
            if self.process.poll() is not None:
                self.stop()
                raise FaultsError(
                    f"`recstack serve` ({self.engine}) exited with {self.process.returncode}: "
                    f"{self.last_log_line()} (log: {self.log_path})"
                )
            try:
                wait_ready(self.url, timeout_s=2)
                return time.monotonic() - started
            except RecstackError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise FaultsError(f"{first_line(exc)} (log: {self.log_path})") from None

    def session(self) -> list[psutil.Process]:
        """Every process still in its session (itself, workers, Ray's processes, HAProxy)."""
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(OSError, psutil.Error):
                if os.getsid(process.pid) == self.process.pid:
                    found.append(process)
        return found

    def kill(self, survivors_wait_s: float = 5.0) -> dict:
        """kill -9 the whole process group. Processes of its session still alive
        `survivors_wait_s` later (in process groups of their own, or started after the kill)
        are listed with what holds the port, then killed too, as a supervisor would before a
        restart."""
        before = {p.pid for p in self.session()}
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        killed_at = time.monotonic()
        deadline = killed_at + survivors_wait_s
        outside_group: set[int] = set()
        while time.monotonic() < deadline and (alive := _alive(self.session())):
            for process in alive:
                with contextlib.suppress(OSError):
                    if os.getpgid(process.pid) != self.process.pid:
                        outside_group.add(process.pid)
            time.sleep(0.1)
        survivors = []
        for process in _alive(self.session()):
            with contextlib.suppress(psutil.Error, OSError):
                survivors.append(
                    {
                        "pid": process.pid,
                        "name": process.name(),
                        "started_after_the_kill": process.pid not in before,
                        "command": " ".join(process.cmdline())[:160],
                    }
                )
        holder = listener(self.port)
        self._reap(timeout_s=0)
        self.log.close()
        return {
            "outside_the_group": len(outside_group),  # outlived the kill for a while
            "all_gone_s": None if survivors else round(time.monotonic() - killed_at, 2),
            "survivors": survivors,
            "port_held_by": None if holder is None else f"{holder.name()} ({holder.pid})",
        }

    def stop(self) -> None:
        if self.process is None:
            return
        super().stop()  # SIGTERM to the group, SIGKILL after 120 s
        self._reap(timeout_s=10)

    def _reap(self, timeout_s: float) -> None:
        """SIGKILL what is left of the session (processes that outlived their group)."""
        deadline = time.monotonic() + timeout_s
        while (alive := _alive(self.session())) and time.monotonic() < deadline:
            time.sleep(0.1)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        deadline = time.monotonic() + 10
        while _alive(alive) and time.monotonic() < deadline:  # zombies count as gone
            time.sleep(0.1)

    def workers(self) -> list[psutil.Process]:
        """The uvicorn worker processes (children of `recstack serve` running the app)."""
        found = []
        for child in psutil.Process(self.process.pid).children():
            with contextlib.suppress(psutil.Error):
                if "resource_tracker" not in " ".join(child.cmdline()):
                    found.append(child)
        return found

    def replicas(self) -> list[psutil.Process]:
        """This service's Ingress replica processes (Ray's, found by process name)."""
        mine = []
        for process in ingress_replicas():
            with contextlib.suppress(OSError):
                if os.getsid(process.pid) == self.process.pid:
                    mine.append(process)
        return mine

    def last_log_line(self) -> str:
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines()]
        except OSError:
            return "no log"
        return next((line.strip() for line in reversed(lines) if line.strip()), "empty log")

    def log_excerpt(self, n: int = 30) -> list[str]:
        """The log's error lines (tracebacks' last lines, ERROR / WARNING), the last `n`."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        keep = [
            line[:300]
            for line in lines
            if any(w in line for w in ("ERROR", "Error", "WARNING", "Exception", "error:"))
        ]
        return keep[-n:]


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    return alive


def request(url: str, method: str = "GET", body: dict | None = None, key: str | None = None):
    """(status, parsed JSON or text) of one HTTP call; status 0 when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            status, text = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class Readiness(threading.Thread):
    """GET /readyz every 0.5 s while the load runs: each change of the answer, timestamped."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.changes, self.done = url, key, [], threading.Event()

    def run(self) -> None:
        last = None
        while not self.done.is_set():
            at = time.time()
            status, body = request(self.url + "/readyz", key=self.key)
            if isinstance(body, dict):
                answer = body.get("status") or body.get("error") or ""
            else:
                answer = str(body)
            answer = str(answer)[:200]
            if (status, answer) != last:
                self.changes.append({"unix": at, "status": status, "answer": answer})
                last = status, answer
            self.done.wait(0.5)


def settle(url: str, key: str, steady_s: float = 3.0, limit_s: float = 60.0) -> dict:
    """Wait until /readyz has answered 200 for `steady_s` straight (every worker or replica
    ready, none still catching up), at most `limit_s`: the load starts from a settled service."""
    started = time.monotonic()
    steady_since, not_ready, last = None, 0, ""
    while time.monotonic() - started < limit_s:
        status, body = request(url + "/readyz", key=key)
        now = time.monotonic()
        if status == 200:
            steady_since = steady_since or now
            if now - steady_since >= steady_s:
                return {"settled_s": round(now - started, 1), "not_ready_answers": not_ready}
        else:
            steady_since, not_ready = None, not_ready + 1
            last = str(body.get("error") if isinstance(body, dict) else body)[:200]
        time.sleep(0.25)
    return {"settled_s": None, "not_ready_answers": not_ready, "last_not_ready": last}


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """What a fault did, in wall-clock (unix) time; converted to window seconds afterwards."""

    start: float | None = None
    end: float | None = None
    details: dict = field(default_factory=dict)
    error: str | None = None


def at(when_unix: float) -> None:
    time.sleep(max(when_unix - time.time(), 0))


def kill_worker(service: FaultService, args, fault: Fault) -> None:
    _kill_one(fault, service.workers, "uvicorn worker", "respawned_after_s")


def kill_replica(service: FaultService, args, fault: Fault) -> None:
    _kill_one(fault, service.replicas, "Ingress replica", "restarted_after_s")


def _kill_one(fault: Fault, processes: Callable[[], list], what: str, replaced_key: str) -> None:
    """kill -9 the first of 2+ processes; record how long until a new one replaced it."""
    before = processes()
    fault.details[f"{what.split()[-1]}s_before"] = [p.pid for p in before]
    if len(before) < 2:
        raise FaultsError(f"found {len(before)} {what}(s), expected 2")
    victim = before[0]
    fault.start = time.time()
    victim.kill()
    fault.details["killed_pid"] = victim.pid
    fault.details[replaced_key] = _replaced(
        lambda: {p.pid for p in processes()}, victim.pid, len(before), fault.start
    )


def _replaced(pids: Callable[[], set[int]], killed: int, count: int, since: float) -> float | None:
    """Seconds until `count` processes run again without the killed one (None: not in 60 s)."""
    while time.time() - since < 60:
        now = pids() - {killed}
        if len(now) >= count:
            return time.time() - since
        time.sleep(0.1)
    return None


def redis_refused(service: FaultService, args, fault: Fault, redis: RedisServer) -> None:
    fault.details["keys_before"] = redis.keys()
    fault.start = time.time()
    redis.kill()
    at(fault.start + args.fault_s)
    redis.start()
    fault.end = time.time()
    fault.details["keys_after_restart"] = redis.keys()


def redis_frozen(service: FaultService, args, fault: Fault, redis: RedisServer) -> None:
    fault.start = time.time()
    redis.freeze()
    at(fault.start + args.fault_s)
    redis.thaw()
    fault.end = time.time()


def redis_emptied(service: FaultService, args, fault: Fault, redis: RedisServer) -> None:
    fault.details["keys_before"] = redis.keys()
    fault.start = time.time()
    redis.empty()
    fault.details["keys_after"] = redis.keys()


def bad_artifacts():
    """tests/serving/bad_artifacts.py's FORGERIES and copy_with_hashes (a NaN-embeddings
    forgery built here when the tests are not there)."""
    sys.path.insert(0, str(REPO / "tests" / "serving"))
    try:
        from bad_artifacts import FORGERIES, copy_with_hashes

        return {name: change for name, (change, _) in FORGERIES.items()}, copy_with_hashes
    except ImportError:
        from recstack.manifest import file_sha256
        from recstack.schema import MANIFEST_FILE

        def copy(src: Path, dst: Path, change: Callable[[Path], None]) -> Path:
            shutil.copytree(src, dst)
            change(dst)
            manifest = json.loads((dst / MANIFEST_FILE).read_text())
            manifest["files"] = {n: file_sha256(dst / n) for n in manifest["files"]}
            (dst / MANIFEST_FILE).write_text(json.dumps(manifest))
            return dst

        def nan_embeddings(dst: Path) -> None:
            manifest = json.loads((dst / MANIFEST_FILE).read_text())
            path = dst / manifest["item_embeddings"]["file"]
            vectors = np.load(path)
            vectors[5] = np.nan
            np.save(path, vectors)

        return {"nan_embeddings": nan_embeddings}, copy
    finally:
        sys.path.remove(str(REPO / "tests" / "serving"))


def corrupt_artifact(service: FaultService, args, fault: Fault, keys: dict) -> None:
    checked = read_serve_config(service.config)
    retriever = Path(checked["models"]["retriever"].models["main"])
    retriever = retriever if retriever.is_absolute() else REPO / retriever
    forgeries, copy_with_hashes = bad_artifacts()
    folder = service.state / "forged"
    paths = {}
    for name, change in forgeries.items():
        paths[name] = copy_with_hashes(retriever, folder / name, change)
    uploads = fault.details["uploads"] = {}
    fault.start = time.time()
    for name, path in paths.items():
        body = {"retriever": {"main": str(path)}}
        status, answer = request(service.url + "/v1/admin/models", "POST", body, keys["models"])
        error = answer.get("error") if isinstance(answer, dict) else answer
        uploads[name] = {"status": status, "answer": str(error)[:200]}
        time.sleep(0.5)
    fault.details["all_refused_with_400"] = all(u["status"] == 400 for u in uploads.values())
    time.sleep(2)  # a published spec reaches every replica within about a second
    status, served = request(service.url + "/v1/admin/models", key=keys["models"])
    fault.details["served_after"] = served if status == 200 else f"{status}: {served}"
    probes = []
    for user in ("1", "7", "42", "100", "500"):
        status, body = request(
            service.url + "/v1/recommend", "POST", {"user_id": user, "k": 10}, keys["app"]
        )
        scores = [i.get("score") for i in body.get("items", [])] if isinstance(body, dict) else []
        probes.append(status == 200 and bool(scores) and all(_finite(s) for s in scores))
    fault.details["probe_scores_finite"] = f"{sum(probes)}/{len(probes)}"


def _finite(value) -> bool:
    return isinstance(value, int | float) and bool(np.isfinite(value))


# --------------------------------------------------------------------------- analysis


@dataclass
class Requests:
    """Per measured request, in schedule order."""

    kind: list[str]  # recommend / events / similar
    seeded: np.ndarray  # [n] bool: a recommend call for a user with a seeded history
    fallback: list[str | None]
    exception: list[str | None]


def per_request(timeline: Timeline, cold: np.ndarray) -> Requests:
    """Split the endpoint labels ("<kind>#<call index>") back into per-request facts."""
    labels = [name.rsplit("#", 1) for name in timeline.endpoints]
    calls = np.array([int(labels[code][1]) for code in timeline.endpoint], dtype=np.int64)
    kind = [labels[code][0] for code in timeline.endpoint]
    first = int(calls[0]) if calls.size else 0
    fallback: list[str | None] = [None] * calls.size
    exception: list[str | None] = [None] * calls.size
    for (label, value), _ in timeline.fallbacks.items():
        fallback[int(label.rsplit("#", 1)[1]) - first] = None if value == "null" else value
    for (label, name), _ in timeline.exceptions.items():
        exception[int(label.rsplit("#", 1)[1]) - first] = name
    seeded = np.array([k == "recommend" for k in kind]) & ~cold[calls]
    return Requests(kind, seeded, fallback, exception)


def fault_caused(req: Requests) -> np.ndarray:
    """[n] bool: a fallback the fault caused (the store's, or no history for a seeded user)."""
    return np.array(
        [
            f == "store_unavailable" or (f == "cold_start" and seeded)
            for f, seeded in zip(req.fallback, req.seeded, strict=True)
        ],
        dtype=bool,
    )


def latency(timeline: Timeline, mask: np.ndarray) -> dict:
    values = timeline.latency_ms[mask]
    summary = summarise(values[~np.isnan(values)])
    return {k: summary[k] for k in ("p50", "p99", "max")} | {"requests": int(mask.sum())}


def analyse(timeline: Timeline, cold: np.ndarray, fault: Fault, name: str, args) -> dict:
    """The scenario's figures from its timeline and what the fault did."""
    status, s = timeline.status, timeline.scheduled_s
    req = per_request(timeline, cold)
    errors = (status >= 500) | (status == EXCEPTION)
    client_4xx = (status >= 400) & (status < 500)
    caused = fault_caused(req)
    bad = errors | caused
    start = fault.start - timeline.window_start_unix if fault.start else None
    end = fault.end - timeline.window_start_unix if fault.end else None
    out: dict = {
        "requests": int(status.size),
        "ok": int(((status >= 200) & (status < 300)).sum()),
        "errors": int(errors.sum()),
        "errors_by_status": dict(Counter(str(v) for v in status[status >= 500].tolist())),
        "errors_by_exception": dict(Counter(e for e in req.exception if e)),
        "client_4xx": int(client_4xx.sum()),
        "client_4xx_by_status": dict(Counter(str(v) for v in status[client_4xx].tolist())),
        "fallbacks": dict(Counter(f for f in req.fallback if f)),
        "fault_fallbacks": int(caused.sum()),
        "bad": int(bad.sum()),
    }
    if start is None:
        out["recovery_s"], out["recovered"] = None, False
        out["latency_ms"] = {"all": latency(timeline, np.ones(s.size, dtype=bool))}
        return out | {"timeline": timeline_rows(timeline, errors, client_4xx, caused, req)}
    reference = end if name in TIMED and end is not None else start
    after_fault = s >= start - IN_FLIGHT_S  # requests in flight when it struck count too
    last_bad = float(s[bad & after_fault].max()) if (bad & after_fault).any() else None
    recovered = last_bad is None or last_bad < s.max(initial=0) - args.settle_s
    out["bad_before_fault"] = int((bad & ~after_fault).sum())
    out["recovered"] = bool(recovered)
    if not recovered:
        out["recovery_s"] = None
    elif last_bad is None:
        out["recovery_s"] = 0.0
    else:
        out["recovery_s"] = round(max(last_bad - reference, 0.0), 3)
    out["last_bad_at_s"] = last_bad
    window_end = end if name in TIMED and end is not None else start + args.fault_s
    if last_bad is not None and recovered:
        window_end = max(window_end, last_bad + 1 / args.rate)
    before, during = s < start, (s >= start) & (s < window_end)
    after = s >= window_end
    out["window_s"] = {"fault_start": start, "fault_end": end, "during_until": window_end}
    out["latency_ms"] = {
        "before": latency(timeline, before),
        "during": latency(timeline, during),
        "after": latency(timeline, after),
        "outside": latency(timeline, before | after),
    }
    blamed = after_fault & (s < window_end)  # during, and what was in flight at the fault
    out["errors_during"] = int((errors & blamed).sum())
    out["errors_outside"] = int((errors & ~blamed).sum())
    out["timeline"] = timeline_rows(timeline, errors, client_4xx, caused, req)
    return out


def timeline_rows(timeline, errors, client_4xx, caused, req: Requests) -> list[dict]:
    """open_loop's per-second rows (sent, p50, p99) with this script's counts."""
    rows = per_second(timeline)
    second = np.floor(timeline.scheduled_s).astype(int)
    for row in rows:
        here = second == row["second"]
        _round(row)
        seeded = int((req.seeded & here).sum())
        row.pop("errors")  # open_loop's counts every non-2xx; ours split 5xx from 4xx
        row["errors"] = int((errors & here).sum())
        row["client_4xx"] = int((client_4xx & here).sum())
        row["fault_fallbacks"] = int((caused & here).sum())
        row["fallback_share"] = (
            round(int((caused & req.seeded & here).sum()) / seeded, 3) if (seeded) else None
        )
    return rows


def _round(row: dict) -> None:
    for name in ("p50_ms", "p99_ms"):
        if row[name] is not None:
            row[name] = round(row[name], 2)


# --------------------------------------------------------------------------- runs


def labelled(mix: Callable[[int], Call]) -> Callable[[int], Call]:
    """The mix's call i labelled "<endpoint>#<i>", so the timeline's tallies are per request."""

    def make(i: int) -> Call:
        call = mix(i)
        return Call(f"{call.endpoint}#{i}", call.method, call.path, call.body)

    return make


def event_calls(catalogue: Catalogue, n: int, per_post: int, tag: str):
    """Call i: POST /v1/events with `per_post` events of unique request ids "<tag>-<i>-<k>"."""
    rng = np.random.default_rng(7)
    users = rng.integers(len(catalogue.user_ids), size=(n, per_post))
    items = rng.integers(len(catalogue.item_ids), size=(n, per_post))
    now = int(time.time())

    def make(i: int) -> Call:
        events = [
            {
                "user_id": catalogue.user_ids[users[i, k]],
                "item_id": catalogue.item_ids[items[i, k]],
                "type": "view",
                "ts": now + i // 100,
                "request_id": f"{tag}-{i}-{k}",
            }
            for k in range(per_post)
        ]
        return Call(f"events#{i}", "POST", "/v1/events", {"events": events})

    return make


class Run:
    """One scenario's Redis, service, load, fault and figures."""

    def __init__(self, name: str, engine: str, args, keys: dict, workdir: Path) -> None:
        self.name, self.engine, self.args, self.keys = name, engine, args, keys
        self.workdir = workdir / f"{name}-{engine}"
        self.workdir.mkdir(parents=True)
        self.redis = RedisServer(
            self.workdir / "redis", free_port(), durable=name == "redis_refused"
        )
        self.service: FaultService | None = None

    def __enter__(self) -> "Run":
        (self.workdir / "redis").mkdir()
        self.redis.start()
        env = {"RECSTACK_APP_KEYS": self.keys["app"], "RECSTACK_MODELS_KEYS": self.keys["models"]}
        started = time.monotonic()
        try:
            self.service = FaultService(
                self.engine, self.args, self.workdir / "state", self.redis.url, env
            )
        except BaseException:
            self.redis.stop()
            raise
        self.ready_s = time.monotonic() - started
        self.settle = settle(self.service.url, self.keys["models"])
        self.load_average = round(os.getloadavg()[0], 2)
        return self

    def __exit__(self, *exc) -> None:
        if self.service is not None:
            self.service.stop()
        self.redis.stop()

    def load(self, make_call, warmup_s: float, inject: Callable[[Fault], None] | None) -> tuple:
        """The open-loop load, with `inject(fault)` in a thread at --fault-at s into the
        measured window; (timeline, fault, readiness changes)."""
        args, fault = self.args, Fault()
        readiness = Readiness(self.service.url, self.keys["models"])

        def injector(window_start: float) -> None:
            at(window_start + args.fault_at)
            try:
                inject(fault)
            except Exception as exc:  # the load goes on; the JSON says what failed
                fault.error = f"{type(exc).__name__}: {first_line(exc)}"
                fault.start = fault.start or time.time()

        thread = threading.Thread(target=injector, args=(time.time() + warmup_s,), daemon=True)
        readiness.start()
        if inject:
            thread.start()
        timeline = run_open_loop(
            self.service.url,
            args.rate,
            args.duration,
            warmup_s,
            make_call,
            headers={"Authorization": f"Bearer {self.keys['app']}"},
            timeout_s=args.timeout,
        )
        if inject:
            thread.join(300)
        readiness.done.set()
        readiness.join(10)
        changes = [
            {"at_s": round(c["unix"] - timeline.window_start_unix, 2), **c}
            for c in readiness.changes
        ]
        for change in changes:
            change.pop("unix")
        return timeline, fault, changes


def run_fault(name: str, engine: str, args, keys: dict, workdir: Path) -> dict:
    """One fault scenario's figures."""
    n = round(args.rate * (args.warmup + args.duration)) + 1
    if n > MAX_REQUESTS:
        raise FaultsError(
            f"--rate × (--warmup + --duration) is {n} requests; at most {MAX_REQUESTS}"
        )
    mix = Mix(args.catalogue, n, seed=args.seed)
    cold = np.asarray(mix.cold)
    run = Run(name, engine, args, keys, workdir)
    with run:
        service, redis = run.service, run.redis
        injectors = {
            "worker_kill": lambda f: kill_worker(service, args, f),
            "replica_kill": lambda f: kill_replica(service, args, f),
            "redis_refused": lambda f: redis_refused(service, args, f, redis),
            "redis_frozen": lambda f: redis_frozen(service, args, f, redis),
            "redis_emptied": lambda f: redis_emptied(service, args, f, redis),
            "corrupt_artifact": lambda f: corrupt_artifact(service, args, f, keys),
        }
        timeline, fault, readiness = run.load(labelled(mix), args.warmup, injectors[name])
        result = {
            "scenario": name,
            "engine": engine,
            "rate": args.rate,
            "seconds": args.duration,
            "ready_s": round(run.ready_s, 1),
            "settle": run.settle,
            "host_load_1m": run.load_average,
            "fault": fault_record(fault, timeline),
        }
        result |= analyse(timeline, cold, fault, name, args)
        result["readiness"] = readiness
        result["server_log"] = service.log_excerpt()
        result["state_dir"] = str(run.workdir)
    return result


def run_server_kill(engine: str, args, keys: dict, workdir: Path) -> dict:
    """Events with unique ids at --rate; kill -9 the process group; start again; every event
    answered 202 must be in the event log."""
    n = round(args.rate * args.duration) + 1
    tag = secrets.token_hex(4)
    make_call = event_calls(args.catalogue, n, args.events_per_post, tag)
    run = Run("server_kill", engine, args, keys, workdir)
    with run:
        service = run.service

        def inject(fault: Fault) -> None:
            fault.start = time.time()
            fault.details |= service.kill()
            fault.details["killed_s"] = round(time.time() - fault.start, 2)
            fault.details["restart_ready_s"] = round(service.start(args.start_timeout), 1)

        timeline, fault, readiness = run.load(make_call, 0.0, inject)
        result = {
            "scenario": "server_kill",
            "engine": engine,
            "rate": args.rate,
            "seconds": args.duration,
            "events_per_post": args.events_per_post,
            "ready_s": round(run.ready_s, 1),
            "settle": run.settle,
            "host_load_1m": run.load_average,
            "fault": fault_record(fault, timeline),
        }
        cold = np.zeros(n, dtype=bool)
        result |= analyse(timeline, cold, fault, "server_kill", args)
        result["readiness"] = readiness
        result["server_log"] = service.log_excerpt()
        acked = {
            f"{tag}-{i}-{k}"
            for i in np.flatnonzero(timeline.status == 202).tolist()
            for k in range(args.events_per_post)
        }
        service.stop()  # a graceful stop of the restarted service; the log is read after it
        run.service = None
        logged_ids = read_events(service.state / "events")["request_id"].to_pylist()
        mine = [i for i in logged_ids if i and i.startswith(f"{tag}-")]
        logged = set(mine)
        result["events"] = {
            "posted": n * args.events_per_post,
            "acked": len(acked),
            "logged": len(logged),
            "lost": len(acked - logged),
            "lost_ids": sorted(acked - logged)[:20],
            "logged_not_acked": len(logged - acked),  # in flight at the kill: allowed
            "duplicates": len(mine) - len(logged),
        }
        result["state_dir"] = str(run.workdir)
    return result


def fault_record(fault: Fault, timeline: Timeline) -> dict:
    def rel(t):
        return None if t is None else round(t - timeline.window_start_unix, 3)

    return {"start_s": rel(fault.start), "end_s": rel(fault.end), "error": fault.error} | {
        k: v for k, v in fault.details.items()
    }


def run_soak(engine: str, args, keys: dict, workdir: Path) -> dict:
    """--soak-rate for --soak-s on one engine, no fault: errors, percentiles, per-second p99."""
    warmup = 10.0
    n = round(args.soak_rate * (warmup + args.soak_s)) + 1
    mix = Mix(args.catalogue, n, seed=args.seed)
    soak_args = argparse.Namespace(
        **{**vars(args), "rate": args.soak_rate, "duration": args.soak_s}
    )
    run = Run("soak", engine, soak_args, keys, workdir)
    with run:
        timeline, _, readiness = run.load(mix, warmup, None)
        status = timeline.status
        errors = (status >= 500) | (status == EXCEPTION)
        client_4xx = (status >= 400) & (status < 500)
        rows = per_second(timeline)
        second = np.floor(timeline.scheduled_s).astype(int)
        for row in rows:  # open_loop counts every non-2xx; split 5xx / none from 4xx
            _round(row)
            row.pop("errors")
            here = second == row["second"]
            row["errors"] = int((errors & here).sum())
            row["client_4xx"] = int((client_4xx & here).sum())
        ok = timeline.latency_ms[~np.isnan(timeline.latency_ms)]
        exceptions, fallbacks = Counter(), Counter()
        for (_, name), count in timeline.exceptions.items():
            exceptions[name] += count
        for (_, kind), count in timeline.fallbacks.items():
            fallbacks[kind] += count
        return {
            "scenario": "soak",
            "engine": engine,
            "rate": args.soak_rate,
            "seconds": args.soak_s,
            "ready_s": round(run.ready_s, 1),
            "settle": run.settle,
            "host_load_1m": run.load_average,
            "requests": int(status.size),
            "ok": int(((status >= 200) & (status < 300)).sum()),
            "errors": int(errors.sum()),
            "errors_by_status": dict(Counter(str(v) for v in status[status >= 500].tolist())),
            "errors_by_exception": dict(exceptions),
            "client_4xx": int(client_4xx.sum()),
            "fallbacks": {k: v for k, v in fallbacks.items() if k != "null"},
            "latency_ms": summarise(ok),
            "worst_second_p99_ms": max((r["p99_ms"] for r in rows if r["p99_ms"]), default=None),
            "client_send_lag_p99_ms": float(np.percentile(timeline.send_lag_ms, 99)),
            "timeline": rows,
            "readiness": readiness,
            "server_log": run.service.log_excerpt(),
        }


def soak_reference(path: Path = RESULTS / "engine_compare.json") -> dict | None:
    """engine_compare's 200 req/s soaks, for a faults JSON whose soak did not run here."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    out = {"file": str(path.relative_to(REPO)), "command": document.get("command"), "engines": {}}
    for engine in ("uvicorn", "ray-colocated"):
        soak = document["engines"].get(engine, {}).get("soaks", {}).get("200")
        if soak:
            out["engines"][engine] = {
                k: soak[k]
                for k in ("seconds", "sent", "errors", "latency_ms", "worst_second_p99_ms")
            } | {
                "store": "embedded (SQLite)",
                "timeline": f"{path.name}: engines.{engine}.soaks.200.timeline",
            }
    return out


# --------------------------------------------------------------------------- main


def code_version() -> dict:
    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except OSError:
            return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "uncommitted_in_serving": sorted(p for p in changed if p.startswith("serving/")),
    }


def scenario_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SCENARIOS)}"
        )
    return names


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        type=scenario_list,
        default=list(SCENARIOS),
        help=f"comma-separated scenarios (default: all): {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--engine",
        choices=["uvicorn", "ray-colocated"],
        default="uvicorn",
        help="engine of the redis_*, corrupt_artifact and server_kill scenarios (worker_kill "
        "is uvicorn's, replica_kill Ray's)",
    )
    parser.add_argument("--rate", type=float, default=80.0, help="design rate, req/s")
    parser.add_argument("--duration", type=float, default=40.0, help="measured s per scenario")
    parser.add_argument("--warmup", type=float, default=5.0, help="s sent before, not counted")
    parser.add_argument("--fault-at", type=float, default=8.0, help="s into the measured window")
    parser.add_argument(
        "--fault-s",
        type=float,
        default=10.0,
        help="how long Redis stays refused / frozen; the 'during' window of the instant faults",
    )
    parser.add_argument(
        "--settle-s",
        type=float,
        default=3.0,
        help="a bad request in the last this-many s of the window: not recovered",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request limit, s")
    parser.add_argument("--events-per-post", type=int, default=4, help="server_kill: events/POST")
    parser.add_argument("--soak-rate", type=float, default=200.0, help="soak: req/s")
    parser.add_argument("--soak-s", type=float, default=300.0, help="soak: measured s")
    parser.add_argument(
        "--soak-engines", nargs="+", choices=["uvicorn", "ray-colocated"],
        default=["uvicorn", "ray-colocated"],
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument(
        "--config", type=Path, help="serve config (default: configs/serve_ml100k.yaml)"
    )
    parser.add_argument("--dataset", type=Path, default=Path("data/ml-100k"))
    parser.add_argument("--start-timeout", type=float, default=300.0, help="s for /readyz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add to --out's scenarios (same scenario and engine: replaced) instead of a new file",
    )
    args = parser.parse_args(argv)
    positive = [args.rate, args.duration, args.fault_s, args.timeout, args.soak_rate, args.soak_s]
    if min(positive) <= 0 or args.warmup < 0 or args.events_per_post < 1 or args.workers < 2:
        parser.error(
            "--rate, --duration, --fault-s, --timeout, --soak-rate and --soak-s must be > 0, "
            "--warmup >= 0, --events-per-post >= 1, --workers >= 2 (one is killed)"
        )
    if not 0 <= args.fault_at < args.duration:
        parser.error("--fault-at must be within the measured window [0, --duration)")
    return args


def preflight(args) -> None:
    """Raise FaultsError on a missing binary, dataset or artifact, before anything starts."""
    if shutil.which("redis-server") is None:
        raise FaultsError("redis-server is not installed (apt-get install redis-server)")
    try:
        args.catalogue = Catalogue.from_dataset(args.dataset)
    except ValueError as exc:
        raise FaultsError(str(exc)) from None
    config = args.config or REPO / ENGINES["uvicorn"][0]
    try:
        read_serve_config(config)  # its models' manifests and hashes are checked too
    except (RecstackError, OSError) as exc:
        raise FaultsError(
            f"{config}: {first_line(exc)} (the ML-100K artifacts: README, train + export)"
        ) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(
        [sys.executable, "benchmarks/faults.py", *(sys.argv[1:] if argv is None else argv)]
    )
    for name in ("out", "dataset", "config"):  # the run goes on in the repository root
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    cwd = os.getcwd()
    os.chdir(REPO)  # the configs name their artifacts relative to it
    try:
        return run_all(args, command)
    finally:
        os.chdir(cwd)


def run_all(args, command: str) -> int:
    started = time.time()
    try:
        preflight(args)
    except FaultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    keys = {"app": secrets.token_urlsafe(24), "models": secrets.token_urlsafe(24)}
    workdir = Path(tempfile.mkdtemp(prefix="recstack-faults-"))
    print(f"state, logs and Redis data of each scenario under {workdir}")
    load_average = os.getloadavg()
    results, soaks, failures = [], [], {}
    for name in args.only:
        engines = args.soak_engines if name == "soak" else [ENGINE_OF.get(name, args.engine)]
        for engine in engines:
            print(f"=== {name} ({engine})", flush=True)
            try:
                if name == "soak":
                    soaks.append(run_soak(engine, args, keys, workdir))
                    result = soaks[-1]
                elif name == "server_kill":
                    results.append(run_server_kill(engine, args, keys, workdir))
                    result = results[-1]
                else:
                    results.append(run_fault(name, engine, args, keys, workdir))
                    result = results[-1]
            except (FaultsError, NoRedis, RecstackError) as exc:
                failures[f"{name}@{engine}"] = first_line(exc)
                print(f"error: {name} ({engine}): {first_line(exc)}", file=sys.stderr)
                continue
            print(summary_line(result), flush=True)
    document = {
        "benchmark": "faults",
        "machine": machine(load_average_1_5_15=[round(v, 2) for v in load_average]),
        "command": command,
        "code": code_version(),
        "python": platform.python_version(),
        "minutes": (time.time() - started) / 60,
        "config": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k != "catalogue"
        },
        "definitions": DEFINITIONS,
        "scenarios": results,
        "soak": soaks or None,
        "failures": failures,
    }
    if args.merge and args.out.is_file():
        document = merge(json.loads(args.out.read_text()), document)
    if not document.get("soak"):
        document["soak_reference"] = soak_reference()
    document.setdefault("runs", [])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"→ {args.out}")
    return 1 if failures else 0


def merge(old: dict, new: dict) -> dict:
    """`new`'s scenarios and soaks into `old` (a scenario run again replaces its entry); both
    commands are kept, in `runs`."""
    runs = old.get("runs") or [
        {k: old.get(k) for k in ("command", "code", "minutes", "config")}
        | {"load_average_1_5_15": old["machine"].get("load_average_1_5_15")}
    ]
    runs.append(
        {k: new.get(k) for k in ("command", "code", "minutes", "config")}
        | {"load_average_1_5_15": new["machine"].get("load_average_1_5_15")}
    )
    key = lambda r: (r["scenario"], r["engine"])  # noqa: E731
    fresh = {key(r) for r in new["scenarios"]}
    scenarios = [r for r in old.get("scenarios", []) if key(r) not in fresh] + new["scenarios"]
    order = {name: i for i, name in enumerate(SCENARIOS)}
    scenarios.sort(key=lambda r: (order[r["scenario"]], r["engine"] != "uvicorn"))
    soaks_new = new.get("soak") or []
    soak_keys = {key(r) for r in soaks_new}
    soaks = [r for r in old.get("soak") or [] if key(r) not in soak_keys] + soaks_new
    rerun = {f"{name}@{engine}" for name, engine in fresh | soak_keys}
    failures = {k: v for k, v in old.get("failures", {}).items() if k not in rerun}
    return old | {
        "command": " ; ".join(r["command"] for r in runs),
        "runs": runs,
        "minutes": sum(r["minutes"] or 0 for r in runs),
        "scenarios": scenarios,
        "soak": soaks or None,
        "failures": failures | new["failures"],
        "code": new["code"],
    }


def summary_line(r: dict) -> str:
    lat = r.get("latency_ms", {})
    during = lat.get("during") or lat
    outside = lat.get("outside") or lat
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    text = (
        f"{r['scenario']} ({r['engine']}): {r['requests']} requests, {r['errors']} errors, "
        f"{r['client_4xx']} 4xx, fallbacks {r['fallbacks']}, "
    )
    if r["scenario"] == "soak":
        text += f"p99 {fmt(lat['p99'])} ms, worst 1-s p99 {fmt(r['worst_second_p99_ms'])} ms"
    else:
        text += f"p99 during {fmt(during.get('p99'))} ms / outside {fmt(outside.get('p99'))} ms"
    if "recovery_s" in r:
        text += f", recovery {fmt(r['recovery_s'])} s"
    if "events" in r:
        text += f", events acked {r['events']['acked']}, lost {r['events']['lost']}"
    if r.get("fault", {}).get("error"):
        text += f"; fault error: {r['fault']['error']}"
    return text


DEFINITIONS = {
    "requests": "measured requests (after the warm-up); ok + errors + client_4xx = requests",
    "errors": "status >= 500 or no response (refused, reset, timeout)",
    "client_4xx": "4xx answers, counted apart from errors",
    "fallbacks": "recommend responses by their `fallback` field",
    "fault_fallbacks": "fallbacks the fault caused: store_unavailable, or cold_start for a "
    "user with a seeded history",
    "latency_ms": "ms from the scheduled send time, 2xx only: before / during / after the fault "
    "and outside it (before + after); during = the fault (refused, frozen), or --fault-s from an "
    "instant fault, stretched to the last bad request",
    "recovery_s": "scheduled send time of the last bad (error or fault_fallback) request minus "
    "the fault's end (redis_refused, redis_frozen) or start (the others); 0: none after the "
    "fault began (or only requests in flight when it struck); null: still bad in the window's "
    "last --settle-s seconds",
    "bad_before_fault": f"bad requests sent over {IN_FLIGHT_S:g} s before the fault (requests "
    "sent later were in flight when it struck and count as its own); 0 on a settled service",
    "timeline": "per second of the window: sent, p50_ms, p99_ms, errors, client_4xx, "
    "fault_fallbacks, fallback_share (of recommend calls for seeded users)",
    "events": "server_kill: acked = events in a POST answered 202; lost = acked ones missing "
    "from the event log after the restart (must be 0)",
}


if __name__ == "__main__":
    sys.exit(main())
