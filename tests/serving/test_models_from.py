"""Which models serve after a restart (serving/model_watch.py): `models_from` in the serve
config, the spec loaded before the first request, and the replica list of GET /v1/admin/models.

In-process: a "worker" is a LocalBackend on a shared embedded store, and a restart is new
backends on the same store (the old ones stopped). The last test runs the uvicorn engine."""

import asyncio
import logging
import shutil

import psutil
import pytest
import requests
from eventually import eventually
from service_config import APP, MODELS, start_serve

from recstack.serving import schemas
from recstack.serving.backend import LocalBackend
from recstack.serving.model_watch import MODELS_KEY, publish, served_models
from recstack.serving.ranking import RankRequest
from recstack.serving.store.base import StoreUnavailable
from recstack.serving.store.embedded import EmbeddedStore


@pytest.fixture(scope="module")
def versions(ml100k_artifacts, tmp_path_factory):
    """The ranker artifact as versions v1 (the fixture's), v2, v3 of one model (copies in this
    module's own folder: the session's artifact folder is shared with other modules)."""
    ranker = ml100k_artifacts["ranker"]
    model_dir = tmp_path_factory.mktemp("versions") / ranker.parent.name
    out = {"v1": ranker}
    for name in ("v2", "v3"):
        out[name] = shutil.copytree(ranker, model_dir / name)
    return out


@pytest.fixture
def store(tmp_path):
    with EmbeddedStore(tmp_path / "state.sqlite") as store:
        yield store


def start(artifacts, ranker, store, replica: str, models_from="last_published") -> LocalBackend:
    return LocalBackend(
        {"main": artifacts["retriever"]}, {"main": ranker}, "auto", store, models_from, replica
    )


def first_answer(backend: LocalBackend) -> str:
    """The model version of this worker's first recommendation (no request before it)."""
    candidates = ["1", "2", "3", "4", "5", "6"]
    request = RankRequest(["50", "172", "181"], candidates, 3)
    return asyncio.run(backend.rank("main", request)).model_version


def test_a_restart_serves_the_published_spec_from_the_first_request(
    ml100k_artifacts, versions, store
):
    running = start(ml100k_artifacts, versions["v1"], store, "w0")
    assert "/v1@" in first_answer(running)
    publish(store, {}, {"main": str(versions["v2"])})
    running.close()
    workers = [start(ml100k_artifacts, versions["v1"], store, f"w{i}") for i in (1, 2)]
    try:
        assert all("/v2@" in first_answer(w) for w in workers)
        assert all(w.ranker.info()["started"] == "published generation 2" for w in workers)
        served = schemas.ServedModels.model_validate(served_models(store))  # the GET's body
        listed = {r.replica: r.model_dump() for r in served.replicas}
        assert {"w1", "w2"} <= set(listed)
        assert all("/v2@" in listed[w]["models"]["ranker"]["main"] for w in ("w1", "w2"))
        assert listed["w1"]["generation"] == 2 and listed["w1"]["models_from"] == "last_published"
    finally:
        for w in workers:
            w.close()


def test_models_from_config_serves_the_config_on_every_replica_and_says_so(
    ml100k_artifacts, versions, store, caplog
):
    first = start(ml100k_artifacts, versions["v1"], store, "w0", "config")
    publish(store, {}, {"main": str(versions["v2"])})
    first.watch.check()  # its background look at the store, now
    assert "/v2@" in first_answer(first)  # a publication swaps models while running
    caplog.set_level(logging.INFO, logger="recstack.serving")
    restarted = start(ml100k_artifacts, versions["v1"], store, "w1", "config")
    try:
        assert "/v1@" in first_answer(restarted)
        line = next(r for r in caplog.records if "replica w1" in r.getMessage())
        assert line.levelno == logging.WARNING
        assert "models_from=config" in line.getMessage()
        assert "replaces generation 2, now 3" in line.getMessage()
        first.watch.check()  # the replica still running follows: one version everywhere
        assert "/v1@" in first_answer(first)
        assert served_models(store)["published"]["ranker"] == {"main": str(versions["v1"])}
    finally:
        first.close()
        restarted.close()


def test_last_published_yields_to_a_config_edited_after_it(ml100k_artifacts, versions, store):
    start(ml100k_artifacts, versions["v1"], store, "w0").close()
    publish(store, {}, {"main": str(versions["v2"])})
    edited = start(ml100k_artifacts, versions["v3"], store, "w1")  # the config changed since
    edited.close()
    assert "/v3@" in first_answer(edited)
    assert "config changed" in edited.ranker.info()["started"]
    again = start(ml100k_artifacts, versions["v3"], store, "w2")  # same config: v3 stays
    again.close()
    assert "/v3@" in first_answer(again)
    publish(store, {}, {"main": str(versions["v2"])})
    swapped = start(ml100k_artifacts, versions["v3"], store, "w3")
    swapped.close()
    assert "/v2@" in first_answer(swapped)


class FlakyStore(EmbeddedStore):
    down = False

    def get_meta(self, key: str) -> str | None:
        if self.down:
            raise StoreUnavailable("connection refused")
        return super().get_meta(key)


def test_a_store_down_at_start_serves_the_config_then_the_published_spec(
    ml100k_artifacts, versions, tmp_path, caplog
):
    with FlakyStore(tmp_path / "state.sqlite") as store:
        start(ml100k_artifacts, versions["v1"], store, "w0").close()
        publish(store, {}, {"main": str(versions["v2"])})
        store.down = True
        worker = start(ml100k_artifacts, versions["v1"], store, "w1")
        try:
            assert "/v1@" in first_answer(worker)
            assert "online store unreachable at start" in worker.ranker.info()["started"]
            assert "online store unreachable at start" in caplog.text
            store.down = False
            worker.watch.check()
            assert "/v2@" in first_answer(worker)
            assert worker.ranker.info()["started"] == "published generation 2"
        finally:
            worker.close()


@pytest.mark.slow  # two service starts (~40 s); the in-process tests above check the logic
@pytest.mark.integration
def test_uvicorn_workers_restart_on_the_published_spec_and_list_it(
    tmp_path, ml100k_artifacts, versions
):
    """Publish v2 through the API, restart `recstack serve --engine uvicorn --workers 2`: the
    first requests already get v2 on every worker, and GET /v1/admin/models says so."""
    options = ("--engine", "uvicorn", "--workers", "2")
    server, url = start_serve(tmp_path, ml100k_artifacts, *options)
    try:
        update = {"ranker": {"main": str(versions["v2"])}}
        accepted = requests.post(f"{url}/v1/admin/models", json=update, headers=MODELS, timeout=60)
        assert accepted.status_code == 202, accepted.text
    finally:
        server.terminate()
        server.wait(timeout=30)
    server, url = start_serve(tmp_path, ml100k_artifacts, *options)
    try:
        body = {"recent_items": ["50", "172"], "k": 5}
        served = [
            requests.post(f"{url}/v1/recommend", json=body, headers=APP, timeout=10).json()
            for _ in range(10)  # new connections: spread over both workers
        ]
        assert all("/v2@" in s["model_version"] for s in served), served

        def both_restarted() -> tuple[dict, list[dict]]:
            listed = requests.get(f"{url}/v1/admin/models", headers=MODELS, timeout=10).json()
            started = f"published generation {listed['published']['generation']}"
            restarted = [  # live workers (uvicorn replaces one that misses its health check)
                r
                for r in listed["replicas"]
                if r["started"] == started and psutil.pid_exists(int(r["replica"].split(":")[-1]))
            ]
            assert len(restarted) == 2, listed  # the first run's workers stay listed up to 30 s
            return listed, restarted

        # a record lost to a concurrent write is rewritten
        listed, restarted = eventually(both_restarted, timeout_s=10, interval_s=0.5)
        assert listed["published"]["ranker"] == {"main": str(versions["v2"])}
        assert all("/v2@" in r["models"]["ranker"]["main"] for r in restarted), restarted
        ready = requests.get(f"{url}/readyz", headers=MODELS, timeout=10).json()
        assert ready["status"] == "ready" and len(ready["replicas"]) >= 1
        assert requests.get(f"{url}/readyz", timeout=10).json() == {"status": "ready"}
        denied = requests.get(f"{url}/v1/admin/models", headers=APP, timeout=10)
        assert denied.status_code == 403
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_spec_keeps_the_config_it_was_published_over(store):
    """`publish` (the admin API) keeps the `config` record the replicas wrote."""
    store.set_meta(MODELS_KEY, '{"generation": 1, "ranker": {"main": "a"}, "config": {"x": 1}}')
    assert publish(store, {}, {"main": "b"}) == 2
    assert '"config": {"x": 1}' in store.get_meta(MODELS_KEY)
