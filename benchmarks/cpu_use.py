"""CPU used by the load client, the server under test and the whole host during a run (psutil).

The server's processes are found only for a loopback URL: the process listening on the URL's
port, climbed up to its topmost ancestor running the same executable (uvicorn's workers are
spawned by `recstack serve`, and only one of them may hold the socket), with all of that
ancestor's descendants. When the listener runs under Ray (Ray's Python proxy, or HAProxy,
which a Ray actor starts), the server is the whole tree of the process that started Ray (the
`recstack serve` driver: GCS, raylet, controller, proxies, replicas, HAProxy), or every Ray
process on this host when Ray was started on its own (`ray start`). The load client and its
own ancestors are never counted as server. For a remote URL only the client and host
figures are given.
"""

import os
import time
from urllib.parse import urlsplit

import psutil

RAY_DAEMONS = ("raylet", "gcs_server")


def server_processes(url: str) -> tuple[list[psutil.Process], str]:
    """The processes serving `url` on this host, and how they were found."""
    port = urlsplit(url).port or 80
    try:
        listeners = {
            conn.pid
            for conn in psutil.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
        }
    except psutil.AccessDenied:
        return [], "not found: listing sockets needs more privileges"
    listeners.discard(None)
    if not listeners:
        return [], f"not found: no process on this host listens on port {port}"
    client = {p.pid for p in [psutil.Process(), *psutil.Process().parents()]}
    found: dict[int, psutil.Process] = {}
    for pid in listeners:
        try:
            root = _server_root(psutil.Process(pid), client)
            for p in [root, *root.children(recursive=True)]:
                if p.pid != os.getpid():
                    found[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone, or another user's
            continue
    if not found:
        if os.getpid() in listeners:
            return [], "not found: this process itself listens on the port"
        return [], f"not found: the processes on port {port} cannot be read (another user's?)"
    raylet = next((r for p in found.values() for r in _ray_ancestors(p)), None)
    if raylet is not None:
        return _ray_tree(raylet, client, port)
    return list(
        found.values()
    ), f"{len(found)} processes: the server on port {port} and its children"


def _server_root(process: psutil.Process, client: set[int]) -> psutil.Process:
    """The topmost ancestor of `process` running the same executable, short of the client."""
    if process.pid in client:
        return process
    exe = process.exe()
    while (parent := process.parent()) is not None and parent.pid not in client:
        try:
            if parent.exe() != exe:
                break
        except psutil.AccessDenied:
            break
        process = parent
    return process


def _ray_ancestors(process: psutil.Process) -> list[psutil.Process]:
    """The raylet above `process` ([] when it does not run under Ray)."""
    try:
        return [p for p in process.parents() if _name(p) == "raylet"]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _ray_tree(raylet: psutil.Process, client: set[int], port: int):
    """Every process of the Ray instance that serves `port`."""
    driver = raylet.parent()
    if driver is None or driver.pid == 1 or driver.pid in client:  # `ray start`: no driver
        ray = [p for p in psutil.process_iter() if _is_ray(p) or _name(p) == "haproxy"]
        return ray, f"{len(ray)} Ray processes on this host (Ray serves port {port})"
    tree = [driver, *driver.children(recursive=True)]
    tree = [p for p in tree if p.pid != os.getpid()]
    return tree, (
        f"{len(tree)} processes: the Ray instance serving port {port} ({_name(driver)} started it)"
    )


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def _is_ray(process: psutil.Process) -> bool:
    name = _name(process)
    return name.startswith("ray::") or name in RAY_DAEMONS


def _cpu_s(processes: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in processes:
        try:
            times = p.cpu_times()
            out[p.pid] = times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


class CpuMeter:
    """`with CpuMeter(url) as meter: …` then `meter.result` (seconds and cores used)."""

    def __init__(self, url: str | None) -> None:
        self.url, self.result = url, {}
        self.client = psutil.Process(os.getpid())

    def __enter__(self) -> "CpuMeter":
        self.servers, self.found_by = server_processes(self.url) if self.url else ([], None)
        self.wall = time.perf_counter()
        self.host = psutil.cpu_times()
        self.client_start = _cpu_s([self.client])[self.client.pid]
        self.server_start = _cpu_s(self.servers)
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.wall
        host = psutil.cpu_times()
        busy = sum(getattr(host, f) - getattr(self.host, f) for f in ("user", "system", "nice"))
        idle = sum(getattr(host, f) - getattr(self.host, f) for f in ("idle", "iowait"))
        client_s = _cpu_s([self.client])[self.client.pid] - self.client_start
        server_end = _cpu_s(self.servers)  # processes gone since the start are not counted
        used = {pid: server_end[pid] - self.server_start.get(pid, 0.0) for pid in server_end}
        server_s = sum(used.values())
        by_role: dict[str, float] = {}  # where the server's CPU went, by process name
        for process in self.servers:
            if process.pid in used:
                role = _name(process) or str(process.pid)
                by_role[role] = by_role.get(role, 0.0) + used[process.pid] / wall
        self.result = {
            "wall_s": wall,
            "host_cores": psutil.cpu_count(),
            "host_busy_fraction": busy / max(busy + idle, 1e-9),
            "client_cpu_s": client_s,
            "client_cores_used": client_s / wall,
            "server_cpu_s": server_s if self.servers else None,
            "server_cores_used": server_s / wall if self.servers else None,
            "server_processes": len(server_end),
            "server_cores_by_process": {
                role: round(cores, 4)
                for role, cores in sorted(by_role.items(), key=lambda kv: -kv[1])
            },
            "server_found_by": self.found_by or "not measured: the service is not on this host",
        }
