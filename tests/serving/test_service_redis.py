"""The real Ray Serve app on a real Redis, with 2 Ingress and 2 Ranker replicas (one per module).

The module runs its own `redis-server` (AOF with fsync on every write, as a production Redis
would keep its data) on a fixed port, so the tests can kill it, freeze it and start it again on
the same port while Ray keeps running.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from eventually import eventually
from service_config import (
    ADMIN,
    APP,
    free_port,
    ray_temp_dir,
    set_test_keys,
    started_redis,
    user_in,
    write_serve_config,
)

from recstack.event_log_format import SegmentName, segment_files
from recstack.serving import serve_cmd

pytestmark = pytest.mark.integration
DB = 3  # a Redis db and key prefix of this module's own
PREFIX = "recstack-redis-test:"
CALLS = 20  # calls per check: the proxy spreads them over both ingress replicas
OUTAGE_BOUND_S = 2.0  # most a request may take while the store is down


@pytest.fixture(scope="module")
def service(tmp_path_factory, ml100k_artifacts):
    root = tmp_path_factory.mktemp("rs")
    server = started_redis(tmp_path_factory.mktemp("redis-data"), db=DB, durable=True)
    set_test_keys()
    store = {"kind": "redis", "url": server.url, "prefix": PREFIX}
    config = write_serve_config(
        root / "serve.yaml", ml100k_artifacts, root / "state", free_port(), store=store, replicas=2
    )
    try:
        url = serve_cmd.start(config, temp_dir=ray_temp_dir())
        try:
            yield {"url": url, "root": root, "redis": server}
        finally:
            serve_cmd.stop()
    finally:
        server.stop()


def post(service, path, body, headers=APP, timeout=30):
    return requests.post(service["url"] + path, json=body, headers=headers, timeout=timeout)


def get(service, path, headers=APP, timeout=30):
    return requests.get(service["url"] + path, headers=headers, timeout=timeout)


def put_consent(service, user, consent: dict) -> requests.Response:
    return requests.put(
        f"{service['url']}/v1/users/{user}/consent", json=consent, headers=APP, timeout=30
    )


def views(user: str, items: list[str], ts: int = 1_900_000_000) -> dict:
    return {
        "events": [
            {"user_id": user, "item_id": item, "type": "view", "ts": ts + n}
            for n, item in enumerate(items)
        ]
    }


def recommend_many(service, body: dict, calls: int = CALLS) -> list[dict]:
    out = []
    for _ in range(calls):
        response = post(service, "/v1/recommend", body)
        assert response.status_code == 200, response.text
        out.append(response.json())
    return out


def item_ids(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


def test_two_ingress_and_two_ranker_replicas_serve_requests(service):
    from ray import serve

    deployments = serve.status().applications["recstack"].deployments
    for name in ("Ingress", "Ranker"):
        assert {str(s): n for s, n in deployments[name].replica_states.items()} == {"RUNNING": 2}, (
            name
        )

    # Each ingress replica logs its events to its own segment (its pid in the file name): posts
    # through HAProxy, 4 at a time, reach both replicas. (HAProxy balances by least connections:
    # short requests may all find the same replica idle, so it may take more than one round.)
    def post_event(n: int) -> int:
        body = {"events": [{"user_id": "spread", "item_id": "1", "type": "impression", "ts": n}]}
        return post(service, "/v1/events", body).status_code

    writers: set[int] = set()
    for _ in range(10):
        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(post_event, range(CALLS))) == {202}
        sealed, opened = segment_files(service["root"] / "state" / "events")
        writers = {SegmentName.parse(p.stem).pid for p in [*sealed, *opened]}
        if len(writers) == 2:
            break
    assert len(writers) == 2, writers


def test_events_are_seen_at_once_by_every_replica(service):
    # A new user: cold start, then history-based on every replica right after one event post.
    user = user_in("model", prefix="rt-")
    cold = post(service, "/v1/recommend", {"user_id": user, "k": 10}).json()
    assert cold["fallback"] == "cold_start"
    watched = item_ids(cold)[:3]  # the most popular items: they would be recommended otherwise
    response = post(service, "/v1/events", views(user, watched))
    assert response.status_code == 202 and response.json()["history_updated"] is True
    answers = recommend_many(service, {"user_id": user, "k": 10})  # no sleep
    for body in answers:
        assert body["fallback"] is None and body["personalised_from"] == "history", body
        assert not set(watched) & set(item_ids(body)), body
    assert len({tuple(item_ids(b)) for b in answers}) == 1  # the ranker replicas agree

    # A user with a seeded history: the new views leave every replica's next answer at once.
    user = user_in("model", start=600)
    before = item_ids(post(service, "/v1/recommend", {"user_id": user, "k": 10}).json())
    watched = before[:3]
    assert post(service, "/v1/events", views(user, watched)).status_code == 202
    answers = recommend_many(service, {"user_id": user, "k": 10})
    for body in answers:
        assert body["personalised_from"] == "history" and body["fallback"] is None, body
        assert not set(watched) & set(item_ids(body)) and item_ids(body) != before, body
    data = get(service, f"/v1/users/{user}/data", headers=ADMIN).json()
    assert data["history"][-3:] == watched


def test_consent_set_through_one_call_is_honoured_by_every_following_call(service):
    user = user_in("model", start=650)
    history = get(service, f"/v1/users/{user}/data", headers=ADMIN).json()["history"]
    assert history
    assert put_consent(service, user, {"personalization": False, "tracking": False}).ok
    for body in recommend_many(service, {"user_id": user, "k": 5}):
        assert body["fallback"] == "opted_out" and body["personalised_from"] is None, body
    for _ in range(CALLS // 2):
        body = post(service, "/v1/events", views(user, ["1"])).json()
        assert body == {"accepted": 0, "dropped_no_consent": 1, "history_updated": True}, body
    assert put_consent(service, user, {"personalization": True, "tracking": True}).ok
    for body in recommend_many(service, {"user_id": user, "k": 5}):
        assert body["fallback"] is None and body["personalised_from"] == "history", body
    assert get(service, f"/v1/users/{user}/data", headers=ADMIN).json()["history"] == history


def test_erasure_leaves_no_key_of_the_user_in_redis(service):
    user = user_in("model", prefix="erase-me-")
    assert post(service, "/v1/events", views(user, ["50", "172"])).status_code == 202
    assert put_consent(service, user, {"personalization": True, "tracking": True}).ok
    onboarded = post(service, f"/v1/users/{user}/onboarding", {"items": ["181"]})
    assert onboarded.status_code == 200
    with service["redis"].client() as client:
        assert any(user in key for key in client.scan_iter(count=1000))  # the scan sees them
    erased = requests.delete(f"{service['url']}/v1/users/{user}", headers=ADMIN, timeout=30)
    body = erased.json()
    held = {place["place"]: place["holds_user"] for place in body.pop("locations")}
    assert body == {
        "user_id": user,
        "erased_online_state": True,
        "event_log_tombstoned": True,
        "complete": False,  # the split pipeline's artifacts cannot be checked from the ingress
    }
    assert held == {
        "online_store": False,
        "event_log": False,
        "seed_dataset": False,
        "artifact": None,
    }
    with service["redis"].client() as client:
        keys = list(client.scan_iter(count=1000))
        assert keys and not [k for k in keys if user in k]
        for key in keys:  # nor any value (the meta hash, histories, consents)
            kind = client.type(key)
            if kind == "hash":
                values = [*client.hkeys(key), *client.hvals(key)]
            elif kind == "list":
                values = client.lrange(key, 0, -1)
            else:
                values = [client.get(key) or ""]
            assert not [v for v in values if user in v], key
    for _ in range(4):  # whichever replica answers
        data = get(service, f"/v1/users/{user}/data", headers=ADMIN).json()
        data.pop("locations")
        assert data == {
            "user_id": user,
            "history": [],
            "consent": None,
            "onboarding": [],
            "events": [],
        }


def wait_ready(service, timeout_s: float = 15.0) -> None:
    """Until /readyz is 200 on several calls in a row (both ingress replicas)."""

    def six_in_a_row() -> bool:
        for _ in range(6):
            response = get(service, "/readyz", headers={})
            assert response.status_code == 200, f"not ready again: {response.text}"
        return True

    eventually(six_in_a_row, timeout_s=timeout_s, interval_s=0.2)


def timed(call):
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def check_store_down_answers(service, seeded_user: str, new_user: str, calls: int) -> None:
    """While the store is down: popularity fallbacks, logged events, 503 readiness; all fast."""
    for _ in range(calls):
        response, took = timed(
            lambda: post(
                service, "/v1/recommend", {"user_id": seeded_user, "k": 5, "explain": True}
            )
        )
        body = response.json()
        assert response.status_code == 200 and took < OUTAGE_BOUND_S, (took, body)
        assert body["fallback"] == "store_unavailable" and body["personalised_from"] is None
        assert len(body["items"]) == 5 and {i["reason"]["kind"] for i in body["items"]} == {
            "popular"
        }
    # the request's own history still personalises
    anonymous = post(service, "/v1/recommend", {"k": 5, "recent_items": ["50", "172"]}).json()
    assert anonymous["fallback"] is None and anonymous["personalised_from"] == "request"
    for n in range(4):
        response, took = timed(
            lambda n=n: post(service, "/v1/events", views(new_user, [str(100 + n)], ts=n))
        )
        assert response.status_code == 202 and took < OUTAGE_BOUND_S, (took, response.text)
        assert response.json() == {
            "accepted": 1,
            "dropped_no_consent": 0,
            "history_updated": False,
        }
    # many users in one batch: one store timeout for the request, not one per user
    batch = {
        "events": [
            {"user_id": f"{new_user}-{u}", "item_id": "1", "type": "view", "ts": 1}
            for u in range(8)
        ]
    }
    response, took = timed(lambda: post(service, "/v1/events", batch))
    assert response.status_code == 202 and took < OUTAGE_BOUND_S, (took, response.text)
    assert response.json()["accepted"] == 8 and response.json()["history_updated"] is False
    for _ in range(calls):
        response, took = timed(lambda: get(service, "/readyz", headers={}))
        assert response.status_code == 503 and took < OUTAGE_BOUND_S, (took, response.text)
        # without a key: that it is not ready, never the store's host or the error text
        details = get(service, "/readyz", headers=ADMIN).json()["error"]
        assert response.json()["error"].startswith("not ready (1 problem(s))"), details
        assert "Redis" not in response.text and "127.0.0.1" not in response.text
        assert "online store" in details and "Redis" in details
    data = get(service, f"/v1/users/{seeded_user}/data", headers=ADMIN)
    assert data.status_code == 503 and "online store unavailable" in data.json()["error"]


def check_recovered(service, seeded_user: str, new_user: str) -> list[str]:
    """Ready and personalised again; returns the new user's online history."""
    wait_ready(service)
    for body in recommend_many(service, {"user_id": seeded_user, "k": 5}):
        assert body["fallback"] is None and body["personalised_from"] == "history", body
    response = post(service, "/v1/events", views(new_user, ["200"], ts=10))
    assert response.json()["history_updated"] is True
    data = get(service, f"/v1/users/{new_user}/data", headers=ADMIN).json()
    assert sorted(e["item_id"] for e in data["events"]) == ["100", "101", "102", "103", "200"]
    return data["history"]


def test_redis_crash_falls_back_fast_and_recovers_without_restarting_ray(service):
    server = service["redis"]
    seeded_user = user_in("model", start=700)
    new_user = user_in("model", prefix="outage-")
    server.kill()
    try:
        check_store_down_answers(service, seeded_user, new_user, calls=CALLS // 2)
    finally:
        server.start()  # the same port; the AOF brings the data back
    # the outage's events are in the log, not in the online history (replay: rebuild_store)
    assert check_recovered(service, seeded_user, new_user) == ["200"]


def test_a_hung_redis_is_bounded_by_the_store_timeout(service):
    """Each call costs at most the store guard's timeout (25 ms) until the circuit opens, and
    nothing after; concurrent calls do not queue behind each other (asyncio Redis client)."""
    server = service["redis"]
    seeded_user = user_in("model", start=800)
    new_user = user_in("model", prefix="hung-")
    server.freeze()
    try:
        check_store_down_answers(service, seeded_user, new_user, calls=4)
        body = {"user_id": seeded_user, "k": 5}
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post(service, "/v1/recommend", body), range(8)))
        elapsed = time.monotonic() - start
        assert {a.json()["fallback"] for a in answers} == {"store_unavailable"}
        assert elapsed < 3.0, f"8 concurrent calls took {elapsed:.1f} s: they queued"
    finally:
        server.thaw()
    # the first (timed-out) consent read marks the store down: no history write was attempted,
    # so none lands late when Redis resumes and works through its queued commands
    assert check_recovered(service, seeded_user, new_user) == ["200"]
