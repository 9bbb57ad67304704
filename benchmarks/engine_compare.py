"""The serving engines side by side under the realistic mix of benchmarks/load_test.py: a step
run to the highest sustained rate, then soaks of at least 5 minutes at fixed rates, each with
its per-second p99 plotted and the server's stalls (serving/timing.py) lined up under it.
Floors come first: the same recommend pipeline in-process (no HTTP, no Ray); per engine, 300
sequential recommend calls (one at a time, nothing queued; then again with `--spaced-ms`
between calls, as sparse traffic arrives), the CPU its HTTP path costs
per request without the model (GET /healthz at 300/s for 30 s), and the CPU it uses with no
traffic at all (`--idle-s`, 60 s: Ray's controller, proxies, raylet and replicas wake up on
timers; at a rate R that is idle_cores / R of CPU per request).

    .venv/bin/python benchmarks/engine_compare.py                       # 3 engines, ~55 min
    .venv/bin/python benchmarks/engine_compare.py --engines uvicorn ray-colocated --no-step

Engines (same models, data and mix; each gets a fresh state dir and runs as `recstack serve`
in a process group of its own, stopped with SIGTERM; the load client shares the machine):
    uvicorn        configs/serve_ml100k.yaml --engine uvicorn --workers <--workers>
    ray-colocated  configs/serve_ml100k.yaml: HAProxy, direct ingress, colocated pipeline
    ray-split      configs/serve_ml100k_split.yaml: Ingress -> Retriever / Ranker deployments

Writes benchmarks/results/engine_compare.json (--out): the floors, per engine the highest
sustained rate, the soak percentiles and errors, server CPU per request and its ratio to
uvicorn's, the stalls, and the targets met or missed; engine_compare_p99.png (per-second p99 of
every soak); and in engine_compare_runs/ each engine's <engine>_step.json and
<engine>_soak<rate>.json from load_test.py, with their PNGs. Needs data/ml-100k and the
artifacts the configs name (README: train + export).
"""

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import requests
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import load_test
from cpu_use import CpuMeter
from load_mix import Catalogue
from machine_info import machine
from open_loop import Call, account, run_open_loop, summarise

from recstack.serving import schemas
from recstack.serving.backend import LocalBackend
from recstack.serving.config import read_serve_config
from recstack.serving.serve_cmd import wait_ready
from recstack.serving.service import build_service

RESULTS = Path(__file__).parent / "results"
ENGINES = {
    "uvicorn": ("configs/serve_ml100k.yaml", "uvicorn"),
    "ray-colocated": ("configs/serve_ml100k.yaml", "ray"),
    "ray-split": ("configs/serve_ml100k_split.yaml", "ray"),
}
IDLE_SETTLE_S = 15.0
TARGETS = {"soak_p99_ms": 15.0, "soak_rate": 200.0, "p50_ms_at_100": 5.0, "cpu_ratio": 1.3}


def in_process(config: Path, users: list[str], calls: int) -> dict:
    """The recommend pipeline's floor: RecommendService with the models in this process (store
    read, arm, retrieval of retrieve_n, ranking of 10), one call at a time, no HTTP."""
    checked = read_serve_config(config)
    state = Path(tempfile.mkdtemp(prefix="recstack-in-process-"))
    args = checked["args"].model_copy(
        update={
            "store": {"kind": "embedded", "path": str(state / "state.sqlite")},
            "event_log": state / "events",
        }
    )
    models = checked["models"]
    service = build_service(
        args,
        lambda store: LocalBackend(models["retriever"].models, models["ranker"].models),
        "in-process",
    )
    rng = random.Random(0)

    async def run() -> np.ndarray:
        times = []
        try:
            for i in range(calls + 100):
                request = schemas.RecommendRequest(user_id=rng.choice(users), k=10)
                start = time.perf_counter()
                await service.recommend(request)
                if i >= 100:  # warm-up
                    times.append((time.perf_counter() - start) * 1000)
        finally:
            await service.close()  # its seed watch too: it would go on checking a closed store
        return np.array(times)

    try:
        return {"calls": calls, "latency_ms": summarise(asyncio.run(run()))}
    finally:
        shutil.rmtree(state, ignore_errors=True)


def sequential(url: str, key: str, users: list[str], calls: int, gap_s: float = 0.0) -> dict:
    """One recommend call at a time over HTTP (nothing queued): the engine's floor. With
    `gap_s` > 0 each call starts that long after the previous one ended, as sparse traffic
    arrives: the machine goes idle between calls."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    rng, times = random.Random(2), []
    for i in range(calls + 20):
        start = time.perf_counter()
        response = session.post(
            url + "/v1/recommend", json={"user_id": rng.choice(users), "k": 10}, timeout=10
        )
        response.raise_for_status()
        if i >= 20:
            times.append((time.perf_counter() - start) * 1000)
        if gap_s > 0:
            time.sleep(gap_s)
    return {"calls": calls, "gap_ms": gap_s * 1000, "latency_ms": summarise(np.array(times))}


def http_path_cpu(url: str, rate: float = 300.0, seconds: float = 30.0) -> dict:
    """CPU per request of the engine's HTTP path alone: GET /healthz (no auth, no store, no
    model) at `rate` for `seconds`, with the server's CPU by process."""
    with CpuMeter(url) as meter:
        timeline = run_open_loop(url, rate, seconds, 3, lambda i: Call("health", "GET", "/healthz"))
    ok = account(timeline)["ok"]
    cpu = meter.result
    return {
        "rate": rate,
        "ok": ok,
        "server_cpu_ms_per_request": 1000 * cpu["server_cpu_s"] / ok if ok else None,
        "server_cores_by_process": cpu.get("server_cores_by_process"),
    }


def idle_cpu(url: str, seconds: float) -> dict:
    """The server's CPU with no requests for `seconds` (after IDLE_SETTLE_S for start-up work
    to end), by process."""
    time.sleep(IDLE_SETTLE_S)
    with CpuMeter(url) as meter:
        time.sleep(seconds)
    cpu = meter.result
    return {"seconds": seconds, "server_cores": cpu.get("server_cores_used"),
            "server_cores_by_process": cpu.get("server_cores_by_process")}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_config(source: Path, state: Path, port: int, replicas: int | None) -> Path:
    """The config with its state (store, event log) under `state`, a free port, and
    `replicas` Ingress replicas when given."""
    document = yaml.safe_load(source.read_text())
    document["http_options"] = {"host": "127.0.0.1", "port": port}
    app = document["applications"][0]
    app["args"]["store"] = {"kind": "embedded", "path": str(state / "state.sqlite")}
    app["args"]["event_log"] = str(state / "events")
    if replicas:
        ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
        ingress["num_replicas"] = replicas
    out = state / "serve.yaml"
    out.write_text(yaml.safe_dump(document, sort_keys=False))
    return out


class Service:
    """`recstack serve` of one engine in its own process group, until stop()."""

    def __init__(self, engine: str, args, key: str) -> None:
        source, kind = ENGINES[engine]
        if args.config and engine != "ray-split":
            source = args.config
        self.state = Path(tempfile.mkdtemp(prefix=f"recstack-{engine}-"))
        self.stall_log = self.state / "stalls"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        replicas = args.replicas if engine == "ray-colocated" else None
        config = service_config(Path(source), self.state, self.port, replicas)
        command = [sys.executable, "-m", "recstack.cli", "serve", "--config", str(config)]
        if kind == "uvicorn":
            command += ["--engine", "uvicorn", "--workers", str(args.workers)]
        env = {**os.environ, "RECSTACK_APP_KEYS": key, "RECSTACK_STALL_LOG": str(self.stall_log)}
        self.log = (self.state / "serve.log").open("wb")
        self.process = subprocess.Popen(
            command, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_ready(self.url, timeout_s=300)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=120)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


def load(service: Service, args, key: str, out: Path, extra: list[str]) -> dict:
    argv = ["--url", service.url, "--api-key", key, "--stall-log", str(service.stall_log)]
    argv += ["--dataset", str(args.dataset), "--out", str(out), *extra]
    if load_test.main(argv) != 0:
        raise SystemExit(f"load test against {service.url} failed; see {out}")
    return json.loads(out.read_text())


def per_request_cpu_ms(step: dict) -> float | None:
    cpu, ok = step["cpu"].get("server_cpu_s"), step["overall"]["ok"]
    return 1000 * cpu / ok if cpu is not None and ok else None


def run_engine(engine: str, args, key: str) -> dict:
    """Step run and soaks of one engine; the summary of its results."""
    folder = args.out.parent / f"{args.out.stem}_runs"
    config = args.config if args.config and engine != "ray-split" else ENGINES[engine][0]
    summary = {"engine": engine, "config": str(config), "soaks": {}}
    service = Service(engine, args, key)
    try:
        if args.idle_s > 0:
            summary["idle"] = idle_cpu(service.url, args.idle_s)
            print(f"idle: {summary['idle']['server_cores']:.4f} server cores")
        summary["sequential"] = sequential(service.url, key, args.users, 300)
        print(f"sequential: {summary['sequential']['latency_ms']}")
        if args.spaced_ms > 0:
            spaced = sequential(service.url, key, args.users, 300, args.spaced_ms / 1000)
            summary["sequential_spaced"] = spaced
            print(f"sequential, {args.spaced_ms:g} ms apart: {spaced['latency_ms']}")
        summary["http_path"] = http_path_cpu(service.url)
        print(f"HTTP path CPU ms/request: {summary['http_path']['server_cpu_ms_per_request']:.3f}")
        if args.step:
            step_args = ["--step", "--step-duration", str(args.step_s), "--warmup", "5"]
            step_args += ["--start-rate", str(args.start_rate)]
            step_args += ["--max-total", str(args.step_max_total), "--label", engine]
            result = load(service, args, key, folder / f"{engine}_step.json", step_args)
            summary["highest_sustained_rps"] = result["highest_sustained_rps"]
        for rate in args.soak_rates:
            soak_args = ["--rate", str(rate), "--duration", str(args.soak_s), "--warmup", "10"]
            out = folder / f"{engine}_soak{rate:g}.json"
            step = load(service, args, key, out, [*soak_args, "--label", engine])["steps"][0]
            summary["soaks"][f"{rate:g}"] = {
                "file": str(out),
                "offered_rps": rate,
                "seconds": step["measured_s"],
                "latency_ms": step["overall"]["latency_ms"],
                "errors": step["overall"]["errors"],
                "sent": step["overall"]["sent"],
                "server_cores": step["cpu"].get("server_cores_used"),
                "client_cores": step["cpu"]["client_cores_used"],
                "server_cpu_ms_per_request": per_request_cpu_ms(step),
                "server_cores_by_process": step["cpu"].get("server_cores_by_process"),
                "worst_second_p99_ms": max(
                    (r["p99_ms"] for r in step["timeline"] if r["p99_ms"] is not None),
                    default=None,
                ),
                "stalls": step.get("stalls", {}).get("by_kind"),
                "timeline": [(r["second"], r["p99_ms"]) for r in step["timeline"]],
            }
    finally:
        service.stop()
        shutil.rmtree(service.state, ignore_errors=True)
    return summary


def targets(engines: dict[str, dict]) -> dict:
    """The serving targets (TARGETS), met or missed, from what was measured."""
    out = {}
    rate = f"{TARGETS['soak_rate']:g}"
    for name in ("uvicorn", "ray-colocated"):
        soak = engines.get(name, {}).get("soaks", {}).get(rate)
        if soak:
            out[f"{name}: {rate} req/s soak p99 <= {TARGETS['soak_p99_ms']:g} ms, 0 errors"] = (
                soak["latency_ms"]["p99"] <= TARGETS["soak_p99_ms"] and soak["errors"] == 0
            )
        soak100 = engines.get(name, {}).get("soaks", {}).get("100")
        if soak100:
            out[f"{name}: p50 <= {TARGETS['p50_ms_at_100']:g} ms at 100 req/s"] = (
                soak100["latency_ms"]["p50"] <= TARGETS["p50_ms_at_100"]
            )
    colocated = engines.get("ray-colocated", {})
    if "highest_sustained_rps" in colocated:
        best = colocated["highest_sustained_rps"]
        out["ray-colocated sustains >= 200 req/s (p99 <= 15 ms)"] = bool(best and best >= 200)
    ratio = colocated.get("cpu_ratio_to_uvicorn", {}).get(rate)
    if ratio is not None:
        out[f"ray-colocated CPU per request <= {TARGETS['cpu_ratio']}x uvicorn's"] = (
            ratio <= TARGETS["cpu_ratio"]
        )
    return out


def plot(engines: dict[str, dict], out: Path) -> Path | None:
    rates = sorted({r for e in engines.values() for r in e["soaks"]}, key=float)
    if not rates:
        return None
    fig, axes = plt.subplots(len(rates), 1, figsize=(10, 3.2 * len(rates)), squeeze=False)
    for ax, rate in zip(axes[:, 0], rates, strict=True):
        for name, engine in engines.items():
            soak = engine["soaks"].get(rate)
            if soak:
                seconds, p99 = zip(*soak["timeline"], strict=True)
                p99 = [float("nan") if v is None else v for v in p99]
                ax.plot(seconds, p99, lw=0.8, label=f"{name} (p99 {soak['latency_ms']['p99']:.1f})")
        ax.axhline(TARGETS["soak_p99_ms"], color="black", lw=0.8, ls="--", label="15 ms")
        ax.set(yscale="log", ylabel="p99 per second (ms)", title=f"soak at {rate} req/s")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds into the soak (after a 10 s warm-up)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="uvicorn workers")
    parser.add_argument(
        "--replicas", type=int, help="ray-colocated Ingress replicas (default: the config's)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="serve config of uvicorn and ray-colocated (default configs/serve_ml100k.yaml)",
    )
    parser.add_argument("--dataset", type=Path, default=Path("data/ml-100k"))
    parser.add_argument(
        "--soak-rates", type=float, nargs="*", default=[100.0, 200.0], help="none: no soak"
    )
    parser.add_argument("--soak-s", type=float, default=300.0, help="measured s per soak")
    parser.add_argument("--idle-s", type=float, default=60.0, help="no traffic; 0: skip")
    parser.add_argument(
        "--spaced-ms",
        type=float,
        default=10.0,
        help="the sequential floor again with this gap between calls (10: 100 req/s); 0: skip",
    )
    parser.add_argument("--no-step", dest="step", action="store_false", help="soaks only")
    parser.add_argument("--step-s", type=float, default=20.0, help="measured s per step")
    parser.add_argument("--start-rate", type=float, default=50.0, help="first step, req/s")
    parser.add_argument("--step-max-total", type=float, default=400.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "engine_compare.json")
    args = parser.parse_args(argv)
    args.users = Catalogue.from_dataset(args.dataset).user_ids
    if args.soak_s < 300:
        print("note: soaks shorter than 5 minutes are not quoted as load figures (README)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    key = secrets.token_urlsafe(24)
    started = time.time()
    floor = in_process(args.config or Path(ENGINES["ray-colocated"][0]), args.users, 2000)
    print(f"in-process: {floor['latency_ms']}")
    engines = {}
    for engine in args.engines:
        print(f"=== {engine}")
        engines[engine] = run_engine(engine, args, key)
    base = engines.get("uvicorn")
    for engine in engines.values():
        engine["cpu_ratio_to_uvicorn"] = {
            rate: soak["server_cpu_ms_per_request"] / base_soak["server_cpu_ms_per_request"]
            for rate, soak in engine["soaks"].items()
            if base
            and (base_soak := base["soaks"].get(rate))
            and soak["server_cpu_ms_per_request"]
            and base_soak["server_cpu_ms_per_request"]
        }
    document = {
        "benchmark": "engine_compare",
        "machine": machine(),
        "command": " ".join([sys.executable, *sys.argv]),
        "config": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "users"
        },
        "in_process": floor,
        "python": platform.python_version(),
        "minutes": (time.time() - started) / 60,
        "engines": engines,
        "targets": targets(engines),
        "plot": str(plot(engines, args.out.with_name(args.out.stem + "_p99.png")) or ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    for name, met in document["targets"].items():
        print(f"{'met   ' if met else 'MISSED'} {name}")
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
