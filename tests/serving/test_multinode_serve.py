"""The Serve app on a real two-node Ray cluster, deployed with `serve deploy` (docs/scaling.md).

Both nodes run on this machine: a head (`ray start --head`, with the dashboard that
`serve deploy` talks to) and a worker (`ray start --address`), one CPU each, told apart by the
custom resources `node_a` / `node_b`. The config is the test's serve YAML plus what a cluster
needs: a Redis store, `proxy_location: EveryNode`, two Ingress replicas spread with
`max_replicas_per_node: 1`, the Retriever pinned to the worker and the Ranker to the head, so
every request crosses nodes.

Both nodes start with the serve config's `ray:` settings in the env of their `ray start` (what
`recstack serve --ray-env` prints: HAProxy and direct ingress, throughput mode), as
docs/scaling.md says; the test checks that HAProxy holds each node's HTTP port.

With EveryNode each node runs its own HTTP proxy on http_options.port. On separate machines
that is one port per machine; here both nodes share one host, so the worker's proxy is moved
with Ray's per-node override RAY_SERVE_WORKER_PROXY_HTTP_PORT (set in the env of its `ray start`)
and each proxy can be called on its own; HAProxy's stats and metrics ports get a free port
per node the same way (RAY_SERVE_HAPROXY_STATS_PORT / _METRICS_PORT). API keys reach the
replicas the way docs/scaling.md says: from the env of each node's `ray start`, as key
variables on the head and as a key file path (RECSTACK_API_KEYS_FILE) on the worker.

Ray's token auth is on, as docs/security.md tells a cluster to run: one token file, named by
RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH in the env of each `ray start` and of `serve
deploy`; the GCS and the replicas' gRPC servers refuse a call without it.

Each node's processes are in a session of their own, ended by process group in `finally`
(never `ray stop`: it kills every Ray process on the machine).
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest
import requests
import yaml
from service_config import ADMIN, ADMIN_KEY, APP, APP_KEY, free_port, ray_temp_dir
from service_config import write_serve_config as write_test_config

from recstack.serving import ray_runtime
from recstack.serving.config import RaySettings

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent
QUIET = {"RAY_USAGE_STATS_ENABLED": "0"}
STARTUP_S = 240  # both nodes, the deploy, and four replicas loading ONNX on 2 shared cores


def cluster_token(folder: Path) -> dict[str, str]:
    """One Ray token for the whole cluster (mode 0600) and the two variables that name it."""
    path = folder / "ray_token"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


RAY_METHODS = {  # a call of each kind of gRPC server a Serve process listens with
    "core worker": "/ray.rpc.CoreWorkerService/GetCoreWorkerStats",
    "replica (inter-deployment)": "/ray.serve.ASGIService/HandleRequest",
    "GCS": "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
}


def refused_without_token(port: int) -> str:
    """The kind of Ray gRPC server on `port`, which refused a call without the token (a
    server answers UNIMPLEMENTED for another kind's method, before its auth check)."""
    codes = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for kind, method in RAY_METHODS.items():
            try:
                channel.unary_unary(method)(b"", timeout=10)
                codes[kind] = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                codes[kind] = exc.code()
    refused = [kind for kind, code in codes.items() if code == grpc.StatusCode.UNAUTHENTICATED]
    assert len(refused) == 1 and set(codes.values()) <= {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }, f"port {port}: {codes}"
    return refused[0]


def serve_grpc_ports() -> list[int]:
    """The ports Serve's processes (controller, replicas) listen on on all interfaces: their
    core workers' gRPC servers and the replicas' inter-deployment ones (the direct-ingress
    HTTP servers listen on the node IP)."""
    ports = []
    for process in psutil.process_iter(["name"]):
        if (process.info["name"] or "").startswith("ray::Serve"):
            try:
                listening = [c for c in process.net_connections() if c.status == "LISTEN"]
            except psutil.Error:
                continue
            ports += [c.laddr.port for c in listening if c.laddr.ip in ("::", "0.0.0.0")]
    return ports


class Node:
    """One `ray start` node in a process group (session) of its own."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "ray"), "start", *args],
                env={**os.environ, **QUIET, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            code = self.proc.wait(timeout=120)  # `ray start` returns once the node is up
        except subprocess.TimeoutExpired:
            code = None
        if code != 0:
            self.stop()
            pytest.fail(f"ray start {args[0]} failed ({code}):\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Terminate every process the node started (raylet, GCS, workers, replicas, and
        HAProxy, which Ray runs in a process group of its own: the whole session goes)."""
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            alive = self.session()
            for process in alive:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(sig)
            _, alive = psutil.wait_procs(alive, timeout=wait_s)
            if not alive:
                return

    def session(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(OSError, psutil.Error):
                if os.getsid(process.pid) == self.proc.pid and process.status() != "zombie":
                    found.append(process)
        return found


def cluster_config(path: Path, artifacts: dict, state: Path, ports: dict, redis: str) -> Path:
    """The tests' serve YAML, made for a cluster (what docs/scaling.md describes)."""
    store = {"kind": "redis", "url": redis, "prefix": "recstack-multinode:"}
    write_test_config(path, artifacts, state, ports["http"], store=store)
    config = yaml.safe_load(path.read_text())
    config["proxy_location"] = "EveryNode"
    options = {
        "Ingress": {"num_replicas": 2, "max_replicas_per_node": 1},
        "Retriever": {"ray_actor_options": {"num_cpus": 0.25, "resources": {"node_b": 0.01}}},
        "Ranker": {"ray_actor_options": {"num_cpus": 0.25, "resources": {"node_a": 0.01}}},
    }
    for deployment in config["applications"][0]["deployments"]:
        deployment.update(options[deployment["name"]])
    path.write_text(yaml.safe_dump(config))
    return path


def serve_details(dashboard: str, auth: dict[str, str]) -> dict:
    """What `serve status` summarises: the REST API of `serve deploy` (proxies, replicas),
    which wants the cluster's token as a bearer token."""
    token = Path(auth["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    response = requests.get(
        f"{dashboard}/api/serve/applications/",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()


def wait_until_ready(dashboard: str, auth: dict, urls: list[str], logs: Path) -> dict:
    deadline, last = time.monotonic() + STARTUP_S, "nothing yet"
    while time.monotonic() < deadline:
        try:
            details = serve_details(dashboard, auth)
            app = details.get("applications", {}).get("recstack", {})
            if app.get("status") == "DEPLOY_FAILED":
                pytest.fail(f"deploy failed: {app.get('message')}\nlogs: {logs}")
            ready = [requests.get(f"{url}/readyz", timeout=5).status_code for url in urls]
            last = f"app {app.get('status')}, /readyz {ready}"
            proxies = {p["status"] for p in details.get("proxies", {}).values()}
            last += f", proxies {sorted(proxies)}"
            if (
                app.get("status") == "RUNNING"
                and ready == [200] * len(urls)
                and proxies == {"HEALTHY"}
            ):
                return details
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(1)
    pytest.fail(f"the cluster app was not ready in {STARTUP_S} s: {last}\nlogs: {logs}")


def test_serve_deploy_runs_the_app_across_two_nodes(tmp_path, ml100k_artifacts, redis_url):
    ports = {name: free_port() for name in ("gcs", "dashboard", "client", "agent_a", "agent_b")}
    ports |= {"http": free_port(), "http_b": free_port()}
    # the config's ray: section (HAProxy + direct ingress, …) as `recstack serve --ray-env`
    # prints it for `ray start`; HAProxy's stats and metrics ports per node (one host here)
    serve_env = ray_runtime.ray_env(RaySettings())

    def haproxy_ports() -> dict[str, str]:
        return {name: str(free_port()) for name in ray_runtime.HAPROXY_PORTS}

    keys_file = tmp_path / "keys.json"  # on a real node: a secret file, same path everywhere
    keys_file.write_text(json.dumps({"app": [APP_KEY], "admin": [ADMIN_KEY]}))
    keys_file.chmod(0o600)
    temp = ray_temp_dir()
    auth = cluster_token(tmp_path)  # on a real cluster: the same file on every node
    config = cluster_config(
        tmp_path / "serve.yaml", ml100k_artifacts, tmp_path / "state", ports, redis_url
    )
    common = ["--num-cpus", "1", "--object-store-memory", str(100 * 1024**2),
              "--temp-dir", str(temp), "--disable-usage-stats"]  # fmt: skip
    nodes: list[Node] = []
    dashboard = f"http://127.0.0.1:{ports['dashboard']}"
    urls = [f"http://127.0.0.1:{ports['http']}", f"http://127.0.0.1:{ports['http_b']}"]
    try:
        head = ["--head", "--port", str(ports["gcs"]), "--include-dashboard", "true",
                "--dashboard-port", str(ports["dashboard"]),
                "--ray-client-server-port", str(ports["client"]),
                "--dashboard-agent-listen-port", str(ports["agent_a"]),
                "--resources", '{"node_a": 1}', *common]  # fmt: skip
        keys = {"RECSTACK_APP_KEYS": APP_KEY, "RECSTACK_ADMIN_KEYS": ADMIN_KEY}
        head_env = keys | serve_env | haproxy_ports() | auth
        nodes.append(Node(head, head_env, tmp_path / "head.log"))
        worker = ["--address", f"127.0.0.1:{ports['gcs']}",
                  "--dashboard-agent-listen-port", str(ports["agent_b"]),
                  "--resources", '{"node_b": 1}', *common]  # fmt: skip
        worker_env = {
            "RECSTACK_API_KEYS_FILE": str(keys_file),
            "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(ports["http_b"]),  # one host, two proxies
            **serve_env,
            **haproxy_ports(),
            **auth,
        }
        nodes.append(Node(worker, worker_env, tmp_path / "worker.log"))

        deploy = subprocess.run(
            [str(BIN / "serve"), "deploy", str(config), "--address", dashboard],
            env={**os.environ, **QUIET, **auth},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        details = wait_until_ready(dashboard, auth, urls, temp / "session_latest" / "logs")

        # where Serve put things: two nodes, a healthy proxy on each, replicas on both
        deployments = details["applications"]["recstack"]["deployments"]
        node_of = {
            name: [r["node_id"] for r in d["replicas"] if r["state"] == "RUNNING"]
            for name, d in deployments.items()
        }
        (retriever_node,), (ranker_node,) = node_of["Retriever"], node_of["Ranker"]
        assert retriever_node != ranker_node
        assert sorted(node_of["Ingress"]) == sorted([retriever_node, ranker_node])
        proxies = details["proxies"]
        assert details["proxy_location"] == "EveryNode"
        assert set(proxies) == {retriever_node, ranker_node}, proxies
        assert {p["status"] for p in proxies.values()} == {"HEALTHY"}
        for port in (ports["http"], ports["http_b"]):  # the ray: settings reached both nodes
            assert ray_runtime.listener(port).name() == "haproxy"

        # Ray's own servers answer only calls that carry the cluster's token
        no_token = requests.get(f"{dashboard}/api/serve/applications/", timeout=10)
        assert no_token.status_code == 401, no_token.text
        assert refused_without_token(ports["gcs"]) == "GCS"
        kinds = [refused_without_token(port) for port in serve_grpc_ports()]
        assert kinds.count("replica (inter-deployment)") == 4, kinds  # 2 Ingress, 1 + 1 model

        # each node's proxy serves the whole API; state is shared through Redis and the log
        user = "1"  # an ML-100K user with history
        for url in urls:
            response = requests.post(
                f"{url}/v1/recommend", json={"user_id": user, "k": 5}, headers=APP, timeout=30
            )
            assert response.status_code == 200, response.text
            assert len(response.json()["items"]) == 5
            no_key = requests.post(f"{url}/v1/recommend", json={"user_id": user}, timeout=30)
            assert no_key.status_code == 401
        event = {"user_id": "multinode-user", "item_id": "50", "type": "click", "ts": 1700000000}
        posted = requests.post(
            f"{urls[1]}/v1/events", json={"events": [event]}, headers=APP, timeout=30
        )
        assert posted.status_code == 202, posted.text
        data = requests.get(f"{urls[0]}/v1/users/multinode-user/data", headers=ADMIN, timeout=30)
        assert data.status_code == 200, data.text
        assert data.json()["history"] == ["50"]  # the online store (Redis)
        assert [e["item_id"] for e in data.json()["events"]] == ["50"]  # the shared event log
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)
