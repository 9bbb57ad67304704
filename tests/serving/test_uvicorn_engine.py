"""`recstack serve --engine uvicorn`: the same API without Ray, two worker processes sharing
the embedded store and the event log."""

import pytest
import requests
from service_config import (
    APP,
    APP_KEY,
    MODELS,
    MODELS_KEY,
    scraped,
    served_by,
    user_in,
    uvicorn_service,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def url(tmp_path_factory, ml100k_artifacts):
    with uvicorn_service(tmp_path_factory.mktemp("uvicorn"), ml100k_artifacts, workers=2) as base:
        yield base


def test_the_uvicorn_engine_serves_the_same_api(url):
    assert (
        requests.post(f"{url}/v1/recommend", json={"user_id": "1"}, timeout=10).status_code == 401
    )
    body = requests.post(
        f"{url}/v1/recommend", json={"user_id": "1", "k": 5}, headers=APP, timeout=10
    )
    assert body.status_code == 200 and len(body.json()["items"]) == 5
    bad = requests.post(
        f"{url}/v1/recommend", json={"user_id": "1", "k": 0}, headers=APP, timeout=10
    )
    assert bad.status_code == 422 and "k" in bad.json()["error"]


def test_an_event_on_one_worker_is_seen_by_every_worker(url):
    user = user_in("model", prefix="uvicorn-")
    cold = requests.post(
        f"{url}/v1/recommend", json={"user_id": user, "k": 5}, headers=APP, timeout=10
    )
    assert cold.json()["arm"] == "model" and cold.json()["fallback"] == "cold_start"
    events = [{"user_id": user, "item_id": "50", "type": "view", "ts": 1_900_000_000}]
    posted = requests.post(f"{url}/v1/events", json={"events": events}, headers=APP, timeout=10)
    assert posted.status_code == 202
    for _ in range(10):  # new connections: the kernel spreads them over both workers
        after = requests.post(
            f"{url}/v1/recommend", json={"user_id": user, "k": 5}, headers=APP, timeout=10
        ).json()
        assert after["personalised_from"] == "history" and "50" not in {
            i["item_id"] for i in after["items"]
        }


def test_one_scrape_counts_the_requests_of_both_workers(url):
    before = scraped(url, "recstack_requests_total", route="/v1/recommend", status="200")
    for n in range(40):  # new connections: the kernel spreads them over both workers
        body = {"user_id": f"metrics-user-{n}", "k": 5}
        assert requests.post(f"{url}/v1/recommend", json=body, headers=APP, timeout=10).ok
    after = scraped(url, "recstack_requests_total", route="/v1/recommend", status="200")
    assert after - before == 40
    assert served_by(url) == 2  # both workers served some of them, and one scrape saw both
    text = requests.get(f"{url}/metrics", headers=MODELS, timeout=10).text
    assert "metrics-user-" not in text and MODELS_KEY not in text and APP_KEY not in text
