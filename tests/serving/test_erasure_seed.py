"""Store seeding and erasure, in-process (no Ray, no HTTP): a store that lost its seed is
reported and re-seeded; an erased user stays out of every re-seeded store, and the erasure
names the dataset and artifact files still holding the user until `recstack data forget`."""

import asyncio
import shutil
import sqlite3
import threading

import pytest
from eventually import eventually_async
from tiny_data import prepared_log

from recstack.cli import main
from recstack.serving import metrics, schemas
from recstack.serving.backend import LocalBackend
from recstack.serving.config import AppArgs
from recstack.serving.event_log import tombstone
from recstack.serving.retrieval import Retriever
from recstack.serving.service import build_service
from recstack.serving.store import seed
from recstack.serving.store.embedded import USER_TABLES, EmbeddedStore


@pytest.fixture
def dataset(tmp_path):
    return prepared_log(tmp_path, ["u1", "u2", "u1", "u3", "u2"], list("abcde"), [1, 2, 3, 4, 5])


@pytest.fixture
def served(ml100k_artifacts, tmp_path):
    """Copies of the ML-100K dataset and artifacts (forgetting rewrites them)."""
    return {k: shutil.copytree(v, tmp_path / k) for k, v in ml100k_artifacts.items()}


def service_on(tmp_path, store: str, dataset, models: dict | None = None):
    """A service seeded from `dataset`, serving `models` ({"retriever": dir, "ranker": dir})
    as "main"; the event log dir (and so its tombstones) is shared by every call."""
    args = AppArgs(
        store={"kind": "embedded", "path": str(tmp_path / store)},
        event_log=tmp_path / "events",
        seed_histories_from=dataset,
    )
    sides = [{"main": models[side]} if models else {} for side in ("retriever", "ranker")]
    backend = LocalBackend(*sides)
    return build_service(args, lambda store: backend, f"test-{store}")


async def close(service) -> None:
    await service.close()  # stops the seed watch too


def seeded_gauge() -> float:
    return metrics.REGISTRY.get_sample_value("recstack_store_seeded")


def test_an_erased_user_stays_out_of_an_empty_store_seeded_again(tmp_path, dataset):
    async def scenario():
        first = service_on(tmp_path, "a.sqlite", dataset)
        assert first.store.history("u2", 10) == ["b", "e"]
        event = schemas.Event(user_id="u2", item_id="f", type="click", ts=10)
        await first.events(schemas.EventsRequest(events=[event]))
        erased = await first.erase("u2")
        places = {p.place: p for p in erased.locations}
        assert erased.erased_online_state and not erased.complete
        assert not places["online_store"].holds_user and not places["event_log"].holds_user
        held = places["seed_dataset"]
        assert held.holds_user and f"recstack data forget --dataset {dataset}" in held.note
        await close(first)

        second = service_on(tmp_path, "b.sqlite", dataset)  # a fresh, empty store
        assert second.store.histories(["u1", "u2", "u3"], 10) == [["a", "c"], [], ["d"]]
        data = await second.user_data("u2")
        assert (data.history, data.events, data.consent, data.onboarding) == ([], [], None, [])
        holds = {p.place: p.holds_user for p in data.locations}
        assert holds == {"online_store": False, "event_log": False, "seed_dataset": True}

        assert main(["data", "forget", "--dataset", str(dataset), "--user", "u2"]) == 0
        again = await second.erase("u2")
        assert again.complete and all(p.holds_user is False for p in again.locations)
        await close(second)
        third = service_on(tmp_path, "c.sqlite", dataset)  # the forgotten dataset seeds too
        assert third.store.histories(["u1", "u2", "u3"], 10) == [["a", "c"], [], ["d"]]
        await close(third)

    asyncio.run(scenario())


def test_a_user_erased_during_a_seed_is_erased_at_its_end(tmp_path, dataset, monkeypatch):
    monkeypatch.setattr(seed, "BATCH_USERS", 1)  # u1, u2, u3: one store write each
    log_dir = tmp_path / "events"
    log_dir.mkdir()

    class ErasedMidway(EmbeddedStore):
        def set_histories(self, histories):
            super().set_histories(histories)
            if "u1" in histories:  # the erasure endpoint, between two writes of the seed
                tombstone(log_dir, "u3")
                self.erase("u3")

    with ErasedMidway(tmp_path / "s.sqlite") as store:
        assert seed.seed_from_dataset(store, dataset, 10, log_dir) == 3
        assert store.histories(["u1", "u2", "u3"], 10) == [["a", "c"], ["b", "e"], []]


def test_an_emptied_store_is_reported_then_reseeded(served, tmp_path, monkeypatch):
    monkeypatch.setattr(seed, "CHECK_EVERY_S", 0.05)
    release, real_seed = threading.Event(), seed.seed_from_dataset
    release.set()

    def held_seed(*args, **kwargs):  # keeps the re-seed going until the test has looked
        assert release.wait(30)
        return real_seed(*args, **kwargs)

    monkeypatch.setattr(seed, "seed_from_dataset", held_seed)

    async def scenario():
        service = service_on(tmp_path, "s.sqlite", served["dataset"], served)
        request = schemas.RecommendRequest(user_id="1", k=5)
        history = service.store.history("1", 200)
        assert history and await service.readiness() == [] and seeded_gauge() == 1
        assert (await service.recommend(request)).fallback is None

        release.clear()
        with sqlite3.connect(service.store.path) as conn:  # what a Redis restarted empty holds
            conn.executescript("".join(f"DELETE FROM {t};" for t in (*USER_TABLES, "meta")))
        problems = await eventually_async(service.readiness)
        line = f"online store: histories not seeded from {served['dataset']} (re-seeding)"
        assert problems == [line] and seeded_gauge() == 0
        assert (await service.recommend(request)).fallback == "cold_start"

        release.set()
        await eventually_async(lambda: asyncio.sleep(0, result=seeded_gauge() == 1))
        assert await service.readiness() == [] and service.store.history("1", 200) == history
        assert (await service.recommend(request)).fallback is None
        await close(service)

    asyncio.run(scenario())


def test_erasure_names_the_artifact_holding_the_user_until_it_is_forgotten(served, tmp_path):
    async def scenario():
        service = service_on(tmp_path, "s.sqlite", served["dataset"], served)
        erased = await service.erase("1")
        places = {p.place: p for p in erased.locations}
        artifact = places["artifact"]  # the two-tower's user_features.parquet; not SASRec's
        assert artifact.path == str(served["retriever"]) and artifact.holds_user
        assert f"recstack data forget --artifact {served['retriever']} --user 1" in artifact.note
        assert places["seed_dataset"].holds_user and not erased.complete

        dirs = ["--dataset", str(served["dataset"]), "--artifact", str(served["retriever"])]
        assert main(["data", "forget", *dirs, "--user", "1"]) == 0
        again = await service.erase("1")
        assert again.complete and {p.place for p in again.locations} == {
            "online_store",
            "event_log",
            "seed_dataset",
            "artifact",
        }
        await close(service)
        reloaded = Retriever.load(served["retriever"])  # hashes verify; the user is gone
        assert "1" not in reloaded.artifact.user_codes and "2" in reloaded.artifact.user_codes

    asyncio.run(scenario())
