"""The colocated pipeline on Ray Serve: retriever and ranker inside each Ingress replica."""

import shutil
import time

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

from recstack.serving import serve_cmd

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
