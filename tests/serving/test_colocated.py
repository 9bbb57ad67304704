"""The colocated pipeline on Ray Serve: retriever and ranker inside each Ingress replica."""

import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from service_config import (
    ADMIN,
    APP,
    free_port,
    ray_temp_dir,
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


def test_hot_update_through_the_ingress_user_config_and_the_admin_api(service):
    ranker = service["artifacts"]["ranker"]
    user = user_in("model", start=900)
    v6, v7 = ranker.parent / "v6", ranker.parent / "v7"
    shutil.copytree(ranker, v6)
    shutil.copytree(ranker, v7)
    serve_cmd.start(service["config"]("v6.yaml", replicas=2, ranker=v6))  # reconfigure in place
    deadline = time.monotonic() + 30
    while "/v6@" not in recommend(service, user)["model_version"]:
        assert time.monotonic() < deadline, "the Ingress user_config update never served"
        time.sleep(0.3)
    update = {"ranker": {"main": str(v7)}}
    accepted = requests.post(
        service["url"] + "/v1/admin/models", json=update, headers=ADMIN, timeout=60
    )
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 30
    while not all("/v7@" in recommend(service, user)["model_version"] for _ in range(6)):
        assert time.monotonic() < deadline, "not every replica loaded the published model"
        time.sleep(0.3)


def test_the_ray_settings_reached_rays_processes(service):
    """HAProxy holds the port, each Ingress replica answers on its own port (direct ingress),
    and the replicas run with the flags (read from their environment, not assumed)."""
    port = int(service["url"].rsplit(":", 1)[1])
    facts = ray_runtime.verify(RaySettings(), port)
    assert facts["port_holder"] == "haproxy"  # not Ray's Python ProxyActor
    assert facts["haproxy_threads"] == ray_runtime.haproxy_threads(RaySettings())
    assert facts["ingress_replicas"] == 2
    assert len(facts["replica_ports"]) == facts["replica_ports_answering"] == 2
    for replica in ray_runtime.ingress_replicas():
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
    deadline = time.monotonic() + 90
    while ray_runtime.verify(RaySettings(), port)["replica_ports_answering"] < 2:
        assert time.monotonic() < deadline, "the killed replica was never replaced"
        time.sleep(1)
    assert all(recommend(service, user)["fallback"] is None for _ in range(6))
