"""Contract tests of every endpoint against a real Ray Serve app (one per module).

Models: a small SASRec ranker and two-tower retriever, barely trained on ML-100K and exported
(conftest.py `ml100k_artifacts`): the tests check behaviour, not quality.
"""

import asyncio
import json
import shutil
import threading

import pyarrow.compute as pc
import pytest
import requests
from bad_artifacts import FORGERIES, copy_with_hashes
from eventually import eventually
from service_config import (
    ADMIN,
    APP,
    MODELS,
    PRIVACY,
    free_port,
    ray_temp_dir,
    set_test_keys,
    user_in,
    write_serve_config,
)

from recstack.serving import serve_cmd
from recstack.serving.event_log import read_events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(tmp_path_factory, ml100k_artifacts):
    root = tmp_path_factory.mktemp("serve")
    set_test_keys()
    config = write_serve_config(root / "serve.yaml", ml100k_artifacts, root / "state", free_port())
    url = serve_cmd.start(config, temp_dir=ray_temp_dir())
    try:
        yield {"url": url, "root": root, "config": config, "artifacts": ml100k_artifacts}
    finally:
        serve_cmd.stop()


def post(service, path, body, headers=APP):
    return requests.post(service["url"] + path, json=body, headers=headers, timeout=30)


def get(service, path, headers=APP):
    return requests.get(service["url"] + path, headers=headers, timeout=30)


def served_version(service, user: str) -> str:
    return post(service, "/v1/recommend", {"user_id": user, "k": 5}).json()["model_version"]


def test_health_needs_no_key_and_everything_else_does(service):
    assert get(service, "/healthz", headers={}).json() == {"status": "ok"}
    assert get(service, "/readyz", headers={}).status_code == 200
    body = {"user_id": "1", "k": 5}
    assert post(service, "/v1/recommend", body, headers={}).status_code == 401
    wrong = post(
        service, "/v1/recommend", body, headers={"Authorization": "Bearer nope-nope-nope-nope"}
    )
    assert wrong.status_code == 401 and "unknown API key" in wrong.json()["error"]
    assert post(service, "/v1/recommend", body).status_code == 200
    assert post(service, "/v1/recommend", body, headers=ADMIN).status_code == 200  # admin has app
    for path, scope in [
        ("/v1/users/1/data", "privacy"),
        ("/v1/experiments/report", "models"),
        ("/metrics", "models"),
    ]:
        response = get(service, path)
        assert response.status_code == 403 and f"{scope!r} scope" in response.json()["error"], path
    assert (
        requests.delete(service["url"] + "/v1/users/1", headers=APP, timeout=10).status_code == 403
    )


def test_recommend_personalises_with_titles_and_explanations(service):
    user = user_in("model")
    response = post(service, "/v1/recommend", {"user_id": user, "k": 10, "explain": True})
    body = response.json()
    assert response.status_code == 200, body
    assert body["arm"] == "model" and body["fallback"] is None
    assert body["personalised_from"] == "history" and body["model_version"].startswith(
        "NextItemTask/v1@"
    )
    assert len(body["items"]) == 10 and len({i["item_id"] for i in body["items"]}) == 10
    assert all(i["title"] for i in body["items"])
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    reasons = [i["reason"] for i in body["items"]]
    assert all(
        r["kind"] == "similar_to_history" and r["because_of"] and r["title"] for r in reasons
    )


def test_popularity_arm_and_stable_assignment(service):
    user = user_in("popularity")
    first = post(service, "/v1/recommend", {"user_id": user, "k": 5, "explain": True}).json()
    again = post(service, "/v1/recommend", {"user_id": user, "k": 5}).json()
    assert first["arm"] == again["arm"] == "popularity" and first["fallback"] is None
    assert first["model_version"].startswith("popularity@")
    assert first["items"][0]["reason"]["text"] == "popular now"


def test_an_event_changes_the_next_recommendation_at_once(service):
    user = user_in("model", start=100)
    before = post(service, "/v1/recommend", {"user_id": user, "k": 10}).json()["items"]
    watched = [i["item_id"] for i in before[:3]]
    events = [
        {
            "user_id": user,
            "item_id": item,
            "type": "view",
            "ts": 1_900_000_000 + n,
            "context": {"device": "mobile"},
        }
        for n, item in enumerate(watched)
    ]
    response = post(service, "/v1/events", {"events": events})
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 3, "dropped_no_consent": 0, "history_updated": True}
    after = post(service, "/v1/recommend", {"user_id": user, "k": 10}).json()["items"]
    assert not set(watched) & {i["item_id"] for i in after}  # seen items are not recommended
    assert [i["item_id"] for i in after] != [i["item_id"] for i in before]
    logged = read_events(service["root"] / "state" / "events")
    mine = logged.filter(pc.equal(logged["user_id"], user)).to_pylist()
    assert [e["item_id"] for e in mine] == watched and {e["arm"] for e in mine} == {"model"}


def test_cold_start_onboarding_and_anonymous_sessions(service):
    cold = post(service, "/v1/recommend", {"user_id": "new-user-1", "k": 5, "explain": True}).json()
    if cold["arm"] == "model":
        assert cold["fallback"] == "cold_start" and cold["items"][0]["reason"]["kind"] == "popular"
    user = user_in("model", start=2000)  # not in ML-100K
    response = post(
        service, f"/v1/users/{user}/onboarding", {"items": ["50", "181", "no-such-item"]}
    )
    assert response.json() == {"stored": 3, "unknown_items": 1}
    onboarded = post(service, "/v1/recommend", {"user_id": user, "k": 5}).json()
    assert onboarded["fallback"] is None and onboarded["personalised_from"] == "onboarding"
    anonymous = post(
        service, "/v1/recommend", {"k": 5, "recent_items": ["50", "172", "zzz"]}
    ).json()
    assert anonymous["personalised_from"] == "request" and anonymous["unknown_items"] == 1
    assert not {"50", "172"} & {i["item_id"] for i in anonymous["items"]}


def test_opted_out_users_get_non_personalised_results(service):
    user = user_in("model", start=200)
    response = requests.put(
        f"{service['url']}/v1/users/{user}/consent",
        json={"personalization": False, "tracking": False},
        headers=APP,
        timeout=10,
    )
    assert response.status_code == 200
    body = post(service, "/v1/recommend", {"user_id": user, "k": 5}).json()
    assert body["fallback"] == "opted_out" and body["personalised_from"] is None
    dropped = post(
        service,
        "/v1/events",
        {"events": [{"user_id": user, "item_id": "1", "type": "click", "ts": 1}]},
    )
    assert dropped.json()["accepted"] == 0 and dropped.json()["dropped_no_consent"] == 1


def test_each_scope_opens_only_its_endpoints(service):
    """privacy: data export and erasure; models: model updates, experiments, metrics,
    readiness details; app: the product's calls; admin: everything."""
    user = user_in("model", start=990)
    update = {"ranker": {"main": str(service["artifacts"]["ranker"])}}
    for headers, allowed in [(PRIVACY, "privacy"), (MODELS, "models"), (APP, "app")]:
        calls = {
            "privacy": [get(service, f"/v1/users/{user}/data", headers=headers)],
            "models": [
                post(service, "/v1/admin/models", update, headers=headers),
                get(service, "/v1/experiments/report", headers=headers),
                get(service, "/metrics", headers=headers),
            ],
            "app": [post(service, "/v1/recommend", {"user_id": user, "k": 3}, headers=headers)],
        }
        for scope, responses in calls.items():
            for response in responses:
                if scope == allowed:
                    assert response.status_code in (200, 202), (allowed, response.text)
                else:
                    assert response.status_code == 403, (allowed, scope, response.text)
                    assert f"{scope!r} scope" in response.json()["error"]
    assert get(service, f"/v1/users/{user}/data", headers=ADMIN).status_code == 200


def test_similar_items(service):
    body = get(service, "/v1/similar/50?k=5").json()
    assert len(body["items"]) == 5 and "50" not in {i["item_id"] for i in body["items"]}
    missing = get(service, "/v1/similar/no-such-item")
    assert missing.status_code == 404 and "not in the catalogue" in missing.json()["error"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"user_id": "1", "k": 0}, "k"),
        ({"user_id": "1", "k": 1001}, "k"),
        ({"user_id": "1", "k": "ten"}, "k"),
        ({"user_id": "1", "colour": "red"}, "colour"),
        ({"user_id": "1", "recent_items": ["1"] * 1001}, "recent_items"),
        ({"user_id": ["1"]}, "user_id"),
        ({"user_id": "1", "context": {"ts": {"nested": 1}}}, "context"),
        # numbers in a context: finite and bounded; ts whole seconds 0..2^40 (were 500s)
        ({"user_id": "1", "context": {"ts": float("nan")}}, "context.ts: must be a string"),
        ({"user_id": "1", "context": {"ts": float("-inf")}}, "context.ts: must be"),
        ({"user_id": "1", "context": {"ts": -1e30}}, "context.ts: must be"),
        ({"user_id": "1", "context": {"ts": 2**70}}, "context.ts: must be"),
        ({"user_id": "1", "context": {"ts": -1}}, "context: ts must be whole seconds"),
        ({"user_id": "1", "context": {"ts": 1.7e9}}, "context: ts must be whole seconds"),
        ({"user_id": "1", "context": {"price": float("nan")}}, "context.price: must be"),
        ({"user_id": "1", "context": {"device": "x" * 129}}, "context.device: must be"),
    ],
)
def test_bad_recommend_requests_get_a_clear_422(service, body, says):
    response = requests.post(  # json.dumps writes NaN / Infinity, as some clients do
        service["url"] + "/v1/recommend",
        data=json.dumps(body),
        headers={**APP, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 422 and says in response.json()["error"], response.text


def test_one_bad_call_in_a_batch_fails_alone(service):
    """Split pipeline: the Retriever batches concurrent calls of many clients (@serve.batch);
    a call the schema would refuse, sent past it, must fail only itself."""
    from ray import serve

    from recstack.serving.config import RETRIEVER
    from recstack.serving.retrieval import RetrievalRequest

    good = RetrievalRequest(["1", "2", "3"], {"ts": 1_700_000_000}, "1", [], 50)
    bad = RetrievalRequest(["1", "2", "3"], {"ts": float("nan")}, "1", [], 50)

    async def outcome(response) -> int | str:
        try:
            return len((await response).item_ids)
        except Exception as exc:  # the poisoned call's own error, raised in its handler
            return type(exc).__name__

    async def calls() -> list:
        handle = serve.get_deployment_handle(RETRIEVER, app_name="recstack")
        # concurrent calls: batched together (max 32, 0.5 ms wait)
        responses = [handle.retrieve.remote("main", bad if i == 5 else good) for i in range(24)]
        return await asyncio.gather(*(outcome(r) for r in responses))

    # the handle's router stays bound to the loop it was made on: one that runs until exit
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    for _ in range(3):
        outcomes = asyncio.run_coroutine_threadsafe(calls(), loop).result(timeout=60)
        assert outcomes[5] != 50 and outcomes[:5] + outcomes[6:] == [50] * 23, outcomes


def test_malformed_and_oversized_bodies(service):
    url = service["url"] + "/v1/recommend"
    headers = {**APP, "Content-Type": "application/json"}
    assert requests.post(url, data="{not json", headers=headers, timeout=10).status_code == 422
    huge = requests.post(url, data="x" * (2 << 20), headers=headers, timeout=10)
    assert huge.status_code == 413 and "larger than" in huge.json()["error"]
    bad_event = post(
        service,
        "/v1/events",
        {"events": [{"user_id": "1", "item_id": "2", "type": "like", "ts": 1}]},
    )
    assert bad_event.status_code == 422 and "type" in bad_event.json()["error"]
    assert post(service, "/v1/events", {"events": []}).status_code == 422


def test_user_data_export_and_erasure(service):
    user = user_in("model", start=300)
    post(
        service,
        "/v1/events",
        {"events": [{"user_id": user, "item_id": "7", "type": "click", "ts": 1_900_000_100}]},
    )
    requests.put(
        f"{service['url']}/v1/users/{user}/consent",
        json={"personalization": True},
        headers=APP,
        timeout=10,
    )
    data = get(service, f"/v1/users/{user}/data", headers=ADMIN).json()
    assert data["history"][-1] == "7" and data["consent"] == {
        "personalization": True,
        "tracking": True,
    }
    assert [e["item_id"] for e in data["events"]] == ["7"]
    erased = requests.delete(f"{service['url']}/v1/users/{user}", headers=ADMIN, timeout=10).json()
    locations = erased.pop("locations")
    assert erased == {
        "user_id": user,
        "erased_online_state": True,
        "event_log_tombstoned": True,
        "complete": False,  # an ML-100K user: the seed dataset still holds them
    }
    seed = next(place for place in locations if place["place"] == "seed_dataset")
    assert seed["holds_user"] is True and "recstack data forget" in seed["note"], locations
    after = get(service, f"/v1/users/{user}/data", headers=ADMIN).json()
    assert after["history"] == [] and after["consent"] is None and after["events"] == []


def test_experiment_report_and_metrics(service):
    user = user_in("model", start=400)
    served = post(service, "/v1/recommend", {"user_id": user, "k": 4}).json()
    shown = {"user_id": user, "type": "impression", "ts": 1_900_000_000}
    shown["request_id"] = served["request_id"]  # ties the click below to this list
    events = [{**shown, "item_id": item["item_id"]} for item in served["items"]]
    events.append({**events[0], "type": "click", "ts": 1_900_000_001})
    assert post(service, "/v1/events", {"events": events}).status_code == 202
    report = get(service, "/v1/experiments/report", headers=ADMIN).json()
    arms = report["arms"]
    assert set(arms) >= {"model", "popularity"}
    assert arms["model"]["impressions"] >= 4 and arms["model"]["clicks"] >= 1
    assert report["guardrails"]["available"] and report["srm"]["users"]["model"] >= 1
    text = get(service, "/metrics", headers=ADMIN).text
    assert "recstack_requests_total" in text and "recstack_recommendations_total" in text


def test_hot_model_update_keeps_serving_and_refuses_a_bad_artifact(service):
    ranker = service["artifacts"]["ranker"]
    v2 = ranker.parent / "v2"
    shutil.copytree(ranker, v2)
    user = user_in("model", start=500)
    errors, done = [], threading.Event()

    def fire():
        while not done.is_set():
            response = post(service, "/v1/recommend", {"user_id": user, "k": 5})
            if response.status_code != 200:
                errors.append(response.status_code)

    thread = threading.Thread(target=fire)
    thread.start()
    try:
        config = write_serve_config(
            service["root"] / "v2.yaml", service["artifacts"], service["root"] / "state",
            int(service["url"].rsplit(":", 1)[1]), ranker=v2,
        )  # fmt: skip
        serve_cmd.start(config)  # same cluster: only user_config changed -> reconfigure in place
        eventually(
            lambda: "/v2@" in served_version(service, user),
            timeout_s=30,
            interval_s=0.2,
            message="the new model version never served",
        )
        bad = ranker.parent / "v3"
        shutil.copytree(ranker, bad)
        (bad / "item_embeddings.npy").write_bytes(b"corrupt")
        config = write_serve_config(
            service["root"] / "v3.yaml", service["artifacts"], service["root"] / "state",
            int(service["url"].rsplit(":", 1)[1]), ranker=bad,
        )  # fmt: skip
        with pytest.raises(Exception, match="does not match the hash"):
            serve_cmd.start(config)  # refused before it reaches the replicas
    finally:
        done.set()
        thread.join()
    assert errors == []
    assert (
        "/v2@" in post(service, "/v1/recommend", {"user_id": user, "k": 5}).json()["model_version"]
    )


def test_admin_model_update_reaches_every_replica_and_refuses_a_bad_artifact(service):
    ranker = service["artifacts"]["ranker"]
    v4 = ranker.parent / "v4"
    shutil.copytree(ranker, v4)
    user = user_in("model", start=700)
    url = service["url"] + "/v1/admin/models"
    denied = requests.post(url, json={"ranker": {"main": str(v4)}}, headers=APP, timeout=30)
    assert denied.status_code == 403
    unknown = requests.post(url, json={"ranker": {"other": str(v4)}}, headers=ADMIN, timeout=30)
    assert unknown.status_code == 400 and "unknown model name" in unknown.json()["error"]
    accepted = requests.post(url, json={"ranker": {"main": str(v4)}}, headers=ADMIN, timeout=60)
    assert accepted.status_code == 202, accepted.text
    eventually(
        lambda: "/v4@" in served_version(service, user),
        timeout_s=30,
        interval_s=0.2,
        message="the replicas never loaded the published model",
    )
    published = get(service, "/v1/admin/models", headers=ADMIN).json()["published"]
    corrupt = ranker.parent / "v5"
    shutil.copytree(ranker, corrupt)
    (corrupt / "sasrec.onnx").write_bytes(b"not onnx")
    refused = requests.post(url, json={"ranker": {"main": str(corrupt)}}, headers=ADMIN, timeout=60)
    assert refused.status_code == 400 and "does not match the hash" in refused.json()["error"]
    # replicas change models only through the published spec: unchanged, they keep v4
    assert get(service, "/v1/admin/models", headers=ADMIN).json()["published"] == published
    assert (
        "/v4@" in post(service, "/v1/recommend", {"user_id": user, "k": 5}).json()["model_version"]
    )


def test_admin_update_refuses_each_forged_artifact_in_one_line_and_keeps_serving(service):
    """Files that match their hashes but are garbage, pickled, non-finite, of the wrong dtype,
    or a manifest without `dim`, or a two-tower as the ranker: 400 with one line, no 500, and
    the model that serves stays."""
    ranker = service["artifacts"]["ranker"]
    url = service["url"] + "/v1/admin/models"
    user = user_in("model", start=750)
    before = served_version(service, user)
    published = get(service, "/v1/admin/models", headers=ADMIN).json()["published"]
    tries = {"two_tower": (service["artifacts"]["retriever"], "where this side serves sasrec")}
    for name, (change, says) in FORGERIES.items():
        tries[name] = (copy_with_hashes(ranker, ranker.parent / f"forged-{name}", change), says)
    for name, (path, says) in tries.items():
        refused = requests.post(
            url, json={"ranker": {"main": str(path)}}, headers=ADMIN, timeout=60
        )
        error = refused.json().get("error", "")
        assert refused.status_code == 400 and says in error and "\n" not in error, (
            name,
            refused.text,
        )
    # nothing was published, so the replicas' next look at the store changes nothing
    assert get(service, "/v1/admin/models", headers=ADMIN).json()["published"] == published
    body = post(service, "/v1/recommend", {"user_id": user, "k": 5}).json()
    assert body["model_version"] == before
    assert all(isinstance(item["score"], float) for item in body["items"]), body
