"""The colocated pipeline on Ray Serve: retriever and ranker inside each Ingress replica."""

import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests
from eventually import eventually
from service_config import (
    ADMIN,
    APP,
    free_port,
    ray_temp_dir,
    scraped,
    served_by,
    set_test_keys,
    user_in,
    write_serve_config,
)

from recstack.serving import ray_runtime, serve_cmd
from recstack.serving.config import RaySettings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from open_loop import Call, run_open_loop

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(tmp_path_factory, ml100k_artifacts):
    root = tmp_path_factory.mktemp("colocated")
    set_test_keys()
    port = free_port()

    def config(name: str, **kwargs):
        return write_serve_config(
            root / name, ml100k_artifacts, root / "state", port, colocated=True, **kwargs
        )

    url = serve_cmd.start(config("serve.yaml", replicas=2), temp_dir=ray_temp_dir())
    try:
        yield {"url": url, "config": config, "artifacts": ml100k_artifacts}
    finally:
        serve_cmd.stop()


def recommend(service, user: str) -> dict:
    body = {"user_id": user, "k": 5}
    return requests.post(
        service["url"] + "/v1/recommend", json=body, headers=APP, timeout=30
    ).json()


def test_both_replicas_serve_personalised_results_and_see_events_at_once(service):
    user = user_in("model", prefix="colocated-")
    assert recommend(service, user)["fallback"] == "cold_start"
    events = [{"user_id": user, "item_id": "50", "type": "view", "ts": 1_900_000_000}]
    posted = requests.post(
        service["url"] + "/v1/events", json={"events": events}, headers=APP, timeout=30
    )
    assert posted.status_code == 202
    for _ in range(10):  # spread over both Ingress replicas
        after = recommend(service, user)
        assert after["personalised_from"] == "history" and after["fallback"] is None
        assert after["model_version"].startswith("NextItemTask/v1@")


def test_one_scrape_through_haproxy_counts_the_requests_of_both_replicas(service):
    url = service["url"]
    before = scraped(url, "recstack_requests_total", route="/v1/recommend", status="200")
    for n in range(40):  # HAProxy spreads them over both Ingress replicas
        assert recommend(service, str(n + 1))["items"]
    after = scraped(url, "recstack_requests_total", route="/v1/recommend", status="200")
    assert after - before == 40
    assert served_by(url) == 2  # one scrape saw both replicas' values


def test_hot_update_through_the_ingress_user_config_and_the_admin_api(service):
    ranker = service["artifacts"]["ranker"]
    user = user_in("model", start=900)
    v6, v7 = ranker.parent / "v6", ranker.parent / "v7"
    shutil.copytree(ranker, v6)
    shutil.copytree(ranker, v7)
    serve_cmd.start(service["config"]("v6.yaml", replicas=2, ranker=v6))  # reconfigure in place
    eventually(
        lambda: "/v6@" in recommend(service, user)["model_version"],
        timeout_s=30,
        interval_s=0.2,
        message="the Ingress user_config update never served",
    )
    update = {"ranker": {"main": str(v7)}}
    accepted = requests.post(
        service["url"] + "/v1/admin/models", json=update, headers=ADMIN, timeout=60
    )
    assert accepted.status_code == 202, accepted.text
    eventually(
        lambda: all("/v7@" in recommend(service, user)["model_version"] for _ in range(6)),
        timeout_s=30,
        interval_s=0.2,
        message="not every replica loaded the published model",
    )


def test_the_ray_settings_reached_rays_processes(service):
    """HAProxy holds the port, each Ingress replica answers on its own port (direct ingress),
    and the replicas run with the flags (read from their environment, not assumed)."""
    port = int(service["url"].rsplit(":", 1)[1])
    facts = ray_runtime.verify(RaySettings(), port)
    assert facts["port_holder"] == "haproxy"  # not Ray's Python ProxyActor
    assert facts["haproxy_threads"] == ray_runtime.haproxy_threads(RaySettings())
    assert facts["ingress_replicas"] == 2
    assert len(facts["replica_ports"]) == facts["replica_ports_answering"] == 2
    assert facts["replica_niceness"] == [0]  # not Ray's default 15
    assert not facts["haproxy_access_log"] and not facts["disconnect_watch"]  # the wrapper's
    for replica in ray_runtime.ingress_replicas():
        assert replica.nice() == 0
        environ = replica.environ()
        assert environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
        assert environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_a_killed_replica_is_replaced_while_haproxy_routes_to_the_other(service):
    """kill -9 of one Ingress replica under 40 req/s: only requests in flight on it fail (HAProxy
    marks it down and re-dispatches new connections), and Ray starts a replacement."""
    port = int(service["url"].rsplit(":", 1)[1])
    victim = ray_runtime.ingress_replicas()[0]
    user = user_in("model", start=700)

    def call(i: int) -> Call:
        return Call("recommend", "POST", "/v1/recommend", {"user_id": user, "k": 5})

    def kill_later() -> None:
        time.sleep(4)
        victim.kill()

    killer = threading.Thread(target=kill_later)
    killer.start()
    timeline = run_open_loop(service["url"], 40, 12, 1, call, headers=APP, timeout_s=10)
    killer.join()
    errors = int((timeline.status != 200).sum())
    print(f"errors while a replica died: {errors} of {timeline.status.size}")
    assert errors <= 10, (errors, timeline.exceptions, list(timeline.status))
    eventually(
        lambda: ray_runtime.verify(RaySettings(), port)["replica_ports_answering"] >= 2,
        timeout_s=90,
        interval_s=0.5,
        message="the killed replica was never replaced",
    )
    assert all(recommend(service, user)["fallback"] is None for _ in range(6))


def test_rays_listeners_are_on_loopback_and_the_rest_need_rays_token(service):
    """Every TCP listener of the local Ray (driver, GCS, raylet, agents, workers, replicas) and
    of HAProxy is on 127.0.0.1, but for each replica's inter-deployment gRPC server, which Ray
    binds to [::] whatever the node IP: that one refuses a call without Ray's token."""
    port = int(service["url"].rsplit(":", 1)[1])
    found = ray_runtime.listeners()
    print("\n".join(map(str, found)))
    names = {x.process.split(".")[0] for x in found}  # "ray::Actor.method" while it runs one
    assert {"gcs_server", "raylet", "haproxy", "ray::ServeController"} <= names
    haproxy = {x.port: x.address for x in found if x.process == "haproxy"}
    assert haproxy == {port: "127.0.0.1", 8404: "127.0.0.1", 9101: "127.0.0.1"}  # stats, metrics
    outside = [x for x in found if x.address not in ("127.0.0.1", "::ffff:127.0.0.1")]
    assert outside and all(
        x.process.startswith("ray::ServeReplica") and x.address == "::" for x in outside
    ), outside
    for x in outside:
        with grpc.insecure_channel(f"127.0.0.1:{x.port}") as channel:
            call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ray_runtime.check_exposure("127.0.0.1", port)["exposed"] == []


@pytest.mark.slow  # waits out HAProxy's 10-s timeout; test_ray_runtime checks the setting
def test_haproxy_closes_a_request_whose_headers_never_complete(service):
    """Slowloris on the Ray engine: HAProxy's client timeout (10 s, as on uvicorn) ends a
    request whose headers stop half-way, with a 408."""
    port = int(service["url"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        began, answer = time.monotonic(), b""
        while chunk := client.recv(4096):  # socket.timeout after 30 s: never closed
            answer += chunk
        waited = time.monotonic() - began
    print(f"closed after {waited:.1f} s: {answer[:40]!r}")
    assert 9 <= waited < 20, waited
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert "timeout client 10s" in ray_runtime._haproxy_config(ray_runtime.listener(port))
