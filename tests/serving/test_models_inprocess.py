"""Retrieval, ranking and artifact loading in-process (no Ray), on small ML-100K artifacts."""

import shutil

import numpy as np
import pytest
import yaml
from service_config import write_serve_config

from recstack.artifact import check_same_vocab, load_artifact
from recstack.errors import DataError, RecstackError
from recstack.item_index import ItemIndex
from recstack.serving import auth
from recstack.serving.auth import ApiKeys
from recstack.serving.config import read_serve_config
from recstack.serving.model_slots import ModelSlots, UnknownModel
from recstack.serving.ranking import Ranker, RankRequest
from recstack.serving.retrieval import RetrievalRequest, Retriever


def test_exact_search_honours_exclusions_and_pads_short_rows():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2001, 16)).astype(np.float32)
    queries = rng.normal(size=(8, 16)).astype(np.float32)
    exclude = [set(range(1, 50))] * 8
    exact_idx, exact_scores = ItemIndex(emb).search(queries, 20, exclude)
    brute = queries @ emb.T
    brute[:, 0] = -np.inf
    brute[:, 1:50] = -np.inf
    np.testing.assert_array_equal(exact_idx, np.argsort(-brute, axis=1)[:, :20])
    assert np.all(np.diff(exact_scores, axis=1) <= 0) and ItemIndex(emb).method == "exact"
    few, scores = ItemIndex(emb[:4]).search(queries[:1], 10, [{1}])
    assert (
        list(few[0][:2]) != [-1, -1]
        and (few[0][2:] == -1).all()
        and np.isneginf(scores[0][2:]).all()
    )


def test_retrieve_then_rank_on_real_artifacts(ml100k_artifacts):
    retriever = Retriever.load(ml100k_artifacts["retriever"])
    ranker = Ranker.load(ml100k_artifacts["ranker"])
    check_same_vocab(retriever.artifact, ranker.artifact)
    history = ["50", "172", "181", "not-an-item"]
    requests = [
        RetrievalRequest(history, {"ts": 1_700_000_000}, "1", ["100"], 100),
        RetrievalRequest([], {}, None, [], 30),  # cold: the two-tower reads context only
    ]
    warm, cold = retriever.retrieve(requests)
    assert len(warm.item_ids) == 100 and warm.unknown_items == 1 and len(cold.item_ids) == 30
    assert not {"50", "172", "181", "100"} & set(warm.item_ids)
    ranked = ranker.rank([RankRequest(history, warm.item_ids, 10, explain=True)])[0]
    assert len(ranked.item_ids) == 10 and set(ranked.item_ids) <= set(warm.item_ids)
    assert {r["because_of"] for r in ranked.reasons} <= {"50", "172", "181"}
    sasrec_as_retriever = Retriever.load(ml100k_artifacts["ranker"])
    assert sasrec_as_retriever.retrieve([RetrievalRequest([], {}, None, [], 10)])[0].item_ids == []


def test_the_ranker_reads_the_last_known_items_of_a_long_history(ml100k_artifacts):
    ranker = Ranker.load(ml100k_artifacts["ranker"])
    catalog, window = ranker.artifact.catalog, ranker.artifact.history_len
    known = catalog.item_ids[1 : window + 40]
    history = [x for i, item in enumerate(known) for x in (item, f"new-{i}")]  # unknown between
    assert catalog.last_known(history, window) == catalog.to_idx(history)[0][-window:]
    assert catalog.last_known(["new", known[0]], 5) == [1] and catalog.last_known(["x"], 3) == []
    candidates = catalog.item_ids[200:300]
    lean, explained = (
        ranker.rank([RankRequest(history, candidates, 10, explain=e)])[0] for e in (False, True)
    )  # without explanations only the window is looked up; the scores are the same
    assert lean.item_ids == explained.item_ids and lean.scores == explained.scores


def test_a_vocab_mismatch_between_retriever_and_ranker_is_refused(ml100k_artifacts, tmp_path):
    retriever = load_artifact(ml100k_artifacts["retriever"])
    ranker = load_artifact(ml100k_artifacts["ranker"])
    ranker.catalog.item_ids = ranker.catalog.item_ids[:-1]
    with pytest.raises(DataError, match="different item vocabularies"):
        check_same_vocab(retriever, ranker)


def test_model_slots_keep_the_old_model_when_a_new_dir_is_bad(ml100k_artifacts, tmp_path):
    slots = ModelSlots(Ranker.load)
    assert slots.apply({"main": str(ml100k_artifacts["ranker"])}) == {}
    old = slots.get("main")
    bad = tmp_path / "bad"
    shutil.copytree(ml100k_artifacts["ranker"], bad)
    (bad / "sasrec.onnx").write_bytes(b"not onnx")
    errors = slots.apply({"main": str(bad)})
    assert "does not match the hash" in errors["main"] and slots.get("main") is old
    with pytest.raises(UnknownModel, match="not loaded"):
        slots.get("other")


def test_api_keys_come_from_the_environment_or_a_file(monkeypatch, tmp_path):
    for name in (*auth.KEY_ENV.values(), auth.KEYS_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(Exception, match="no API keys"):
        ApiKeys.from_environment()
    monkeypatch.setenv("RECSTACK_APP_KEYS", "short")
    with pytest.raises(Exception, match=">= 16 characters"):
        ApiKeys.from_environment()
    secret = tmp_path / "keys.json"
    secret.write_text('{"app": ["a-very-long-app-key-1"], "admin": ["a-very-long-admin-key"]}')
    monkeypatch.delenv("RECSTACK_APP_KEYS")
    monkeypatch.setenv("RECSTACK_API_KEYS_FILE", str(secret))
    keys = ApiKeys.from_environment()
    assert keys.scopes_of("a-very-long-app-key-1") == {"app"}
    assert keys.scopes_of("a-very-long-admin-key") == {"app", "models", "privacy", "admin"}
    assert keys.scopes_of("a-very-long-app-key-2") == set()


def test_keys_rotate_when_the_keys_file_changes(monkeypatch, tmp_path, caplog):
    for name in auth.KEY_ENV.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(auth, "RELOAD_EVERY_S", 0.0)
    secret = tmp_path / "keys.json"
    secret.write_text('{"app": ["old-app-key-0123456"], "privacy": ["privacy-key-0123456"]}')
    monkeypatch.setenv("RECSTACK_API_KEYS_FILE", str(secret))
    keys = ApiKeys.from_environment()
    assert keys.current() is not keys and keys.current().digests == keys.digests  # unchanged
    assert keys.scopes_of("privacy-key-0123456") == {"privacy"}  # no models, no app
    secret.write_text('{"app": ["new-app-key-0123456", "another-app-key-01"]}')
    rotated = keys.current()
    assert rotated.scopes_of("new-app-key-0123456") == {"app"}
    assert rotated.scopes_of("old-app-key-0123456") == set()
    secret.write_text("{not json")  # a broken file: the keys read last stay, and it is logged
    kept = rotated.current()
    assert kept.scopes_of("new-app-key-0123456") == {"app"}
    assert "keeping the previous ones" in caplog.text


@pytest.mark.gpu
def test_onnxruntime_takes_the_cuda_provider_when_it_has_one(ml100k_artifacts):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider (pip install onnxruntime-gpu)")
    artifact = load_artifact(ml100k_artifacts["ranker"])
    assert artifact.session.get_providers()[0] == "CUDAExecutionProvider"
    ranker = Ranker(artifact)
    ranked = ranker.rank([RankRequest(["50", "181"], ["1", "2", "3"], 2)])[0]
    assert len(ranked.item_ids) == 2


def test_deployment_options_reach_serve_and_an_unknown_one_is_refused(ml100k_artifacts, tmp_path):
    from recstack.serving.serve_cmd import application

    config = write_serve_config(tmp_path / "serve.yaml", ml100k_artifacts, tmp_path, 8000)
    document = yaml.safe_load(config.read_text())
    ingress = document["applications"][0]["deployments"][0]
    ingress["max_replicas_per_node"] = 1  # a cluster option `serve deploy` takes
    config.write_text(yaml.safe_dump(document))
    app = application(read_serve_config(config), config)
    assert app._bound_deployment._replica_config.max_replicas_per_node == 1
    ingress["max_replicas_per_nodes"] = 1
    config.write_text(yaml.safe_dump(document))
    with pytest.raises(
        RecstackError, match=r"deployment Ingress has unknown options \['max_replicas_per_nodes'\]"
    ):
        application(read_serve_config(config), config)


def test_similar_items_of_a_large_catalogue_are_searched_off_the_event_loop(
    ml100k_artifacts, monkeypatch
):
    import asyncio
    import threading

    from recstack.serving import backend

    replica = backend.RankerReplica({"main": str(ml100k_artifacts["ranker"])})
    inline = replica.similar("main", "50", 5)
    threads = []
    searched = replica.similar

    def similar(*args):
        threads.append(threading.current_thread())
        return searched(*args)

    monkeypatch.setattr(replica, "similar", similar)
    assert asyncio.run(replica.similar_off_loop("main", "50", 5)) == inline  # 1,682 items: inline
    monkeypatch.setattr(backend, "OFF_LOOP_ITEMS", 1000)  # now "large": a worker thread
    assert asyncio.run(replica.similar_off_loop("main", "50", 5)) == inline
    assert threads[0] is threading.main_thread() and threads[1] is not threading.main_thread()
