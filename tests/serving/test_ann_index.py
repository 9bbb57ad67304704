"""The ANN index: built by `recstack export --ann`, loaded and re-checked by serving, never
built there; refusals of a missing, corrupt or foreign index, each in one line."""

import shutil
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest
from bad_artifacts import copy_with_hashes

from recstack import item_index
from recstack.artifact_manifest import ARTIFACT_KIND
from recstack.cli import main
from recstack.errors import DataError, RecstackError
from recstack.item_index import AnnIndex, ItemIndex, exact_top, recall, unit_rows
from recstack.manifest import read_manifest
from recstack.serving.model_slots import ModelSlots
from recstack.serving.ranking import Ranker
from recstack.serving.retrieval import RetrievalRequest, Retriever
from recstack.training.export import ann_index
from recstack.training.export.ann_index import INDEX_FILE, QUERIES_FILE, build_ann


def clustered(n_items: int, dim: int, seed: int = 0) -> np.ndarray:
    """[n_items + 1, d] item vectors around 50 centres (row PAD zero): what IVF is for."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    vectors = centres[rng.integers(0, 50, n_items)] + 0.3 * rng.normal(size=(n_items, dim))
    return np.vstack([np.zeros((1, dim)), vectors]).astype(np.float32)


@pytest.fixture(scope="module")
def ann_artifacts(tmp_path_factory, ml100k_artifacts) -> dict[str, Path]:
    """The ML-100K checkpoints exported again with `--ann on` (1,682 items: forced), IVF
    only (the faster candidate is chosen by timing; these tests need one kind)."""
    root = tmp_path_factory.mktemp("ann-artifacts")
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ann_index, "PQ_MIN_ITEMS", 10**9)
        for role in ("retriever", "ranker"):
            ckpt = read_manifest(ml100k_artifacts[role], ARTIFACT_KIND)["training"]["checkpoint"]
            out[role] = root / role / "v1"
            assert main(["export", "--ckpt", ckpt, "--out", str(out[role]), "--ann", "on"]) == 0
    return out


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_an_index_built_from_vectors_loads_and_searches_like_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(ann_index, "PQ_MIN_ITEMS", 10**9)  # IVF only
    vectors = clustered(5000, 16)
    queries = vectors[1:257] + 0.1
    block = build_ann(vectors, queries, "inner_product", None, tmp_path, "test")
    assert block["kind"] == ann_index.IVF_KIND and block["refine"] == 1
    assert block["nlist"] == ann_index.default_nlist(5000) == 128
    assert block["recall_at_100"] >= 0.95 and block["nprobe"] in ann_index.NPROBE_LADDER
    (ivf,) = block["tried"]
    by_probe = {int(s.split()[1]): r for s, r in ivf["recall_by_setting"].items()}
    assert by_probe[block["nprobe"]] == block["recall_at_100"] and ivf["search_ms"] > 0
    assert all(r < 0.95 for p, r in by_probe.items() if p < block["nprobe"])
    ann = AnnIndex.load(tmp_path, block, vectors)
    assert abs(ann.recall - block["recall_at_100"]) < 1e-4  # the same queries, same index

    index = ItemIndex(vectors, ann)
    exclude = [set(range(1, 400)), set(), {5, 6, 7}, set(range(1, 5001, 2))]
    idx, scores = index.search(queries[:4], 50, exclude)
    exact_idx, _ = ItemIndex(vectors).search(queries[:4], 50, exclude)
    assert idx.shape == (4, 50) and index.method == "ann"
    for row, banned in enumerate(exclude):
        assert not set(idx[row].tolist()) & banned and 0 not in idx[row]
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert recall(idx, exact_idx) >= 0.9
    exact_scores = np.einsum("bnd,bd->bn", vectors[idx], queries[:4])  # the quantised index's
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5)  # finds, scored exactly


def test_ann_rows_are_padded_when_exclusions_leave_too_few(tmp_path):
    vectors = clustered(200, 8)
    block = build_ann(vectors, vectors[1:65], "inner_product", 4, tmp_path, "test")
    index = ItemIndex(vectors, AnnIndex.load(tmp_path, block, vectors))
    idx, scores = index.search(vectors[1:3], 10, [set(range(1, 196)), set(range(1, 201))])
    assert sorted(idx[0][:5].tolist()) == [196, 197, 198, 199, 200]
    assert (idx[0][5:] == -1).all() and np.isneginf(scores[0][5:]).all()
    assert (idx[1] == -1).all() and np.isneginf(scores[1]).all()


def unclustered(n_items: int, dim: int, seed: int = 0) -> np.ndarray:
    """[n_items + 1, d] unit vectors with no structure (row PAD zero): barely trained item
    vectors look like this, and IVF needs most of its lists to find their neighbours."""
    rng = np.random.default_rng(seed)
    return np.vstack([np.zeros((1, dim)), unit_rows(rng.normal(size=(n_items, dim)))]).astype(
        np.float32
    )


def test_vectors_without_structure_get_the_pq_fast_scan(tmp_path, monkeypatch):
    monkeypatch.setattr(ann_index, "NPROBE_LADDER", (1, 2))  # IVF cannot reach the target
    vectors = unclustered(20_000, 32)
    queries = vectors[1:257]
    block = build_ann(vectors, queries, "cosine", None, tmp_path, "test")
    assert block["kind"] == "faiss_pq_fastscan" and block["nlist"] is None
    assert block["pq_m"] in (16, 32) and block["refine"] * 100 <= 20_000 // 8
    ivf, pq = block["tried"]
    assert ivf["search_ms"] is None and ivf["recall"] < 0.95  # not eligible
    assert pq["recall"] == block["recall_at_100"] >= 0.95 and pq["search_ms"] > 0
    ann = AnnIndex.load(tmp_path, block, vectors)
    assert abs(ann.recall - block["recall_at_100"]) < 1e-4 and ann.refine == block["refine"]

    index = ItemIndex(vectors, ann)
    exclude = [set(range(1, 400)), {5, 6, 7}, set()]
    idx, scores = index.search(queries[:3], 50, exclude)
    exact_idx = ItemIndex(vectors).search(queries[:3], 50, exclude)[0]
    assert idx.shape == (3, 50) and 0 not in idx and not set(idx[0].tolist()) & exclude[0]
    assert recall(idx, exact_idx) >= 0.9 and np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_allclose(scores, np.einsum("bnd,bd->bn", vectors[idx], queries[:3]), 1e-5)

    for kind, message in (("faiss_ivf_sq8", "do not fit its kind"), ("hnsw", "unknown ANN")):
        with pytest.raises(DataError, match=message) as exc:  # a PQ block relabelled: no nprobe
            AnnIndex.load(tmp_path, {**block, "kind": kind}, vectors)
        one_line(exc)

    other = unclustered(20_000, 32, seed=1)  # same shape, other vectors: the check refuses
    with pytest.raises(DataError, match="does not match this artifact's item vectors") as exc:
        AnnIndex.load(tmp_path, block, other)
    one_line(exc)


def test_an_unreachable_recall_target_fails_the_build_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(ann_index, "NPROBE_LADDER", (1,))
    monkeypatch.setattr(ann_index, "REFINE_LADDER", (1,))
    vectors = unclustered(4000, 32)
    with pytest.raises(RecstackError, match=r"no ANN index reaches.*--ann_nlist") as exc:
        build_ann(vectors, vectors[1:129], "inner_product", 64, tmp_path, "test")
    one_line(exc)
    assert "faiss_ivf_sq8 0." in str(exc.value) and "faiss_pq_fastscan 0." in str(exc.value)
    assert not (tmp_path / INDEX_FILE).exists()


def test_search_threads_apply_in_the_thread_that_searches(tmp_path):
    vectors = clustered(500, 8)
    block = build_ann(vectors, vectors[1:33], "inner_product", None, tmp_path, "test")
    ann = AnnIndex.load(tmp_path, block, vectors)
    seen = []

    def search() -> None:
        ann.search(vectors[1:2], 5)
        seen.append(faiss.omp_get_max_threads())

    try:
        for n in (1, 2):
            item_index.use_search_threads(n)
            thread = threading.Thread(target=search)
            thread.start()
            thread.join()
        assert seen == [1, 2]
        with pytest.raises(RecstackError, match="must be >= 1"):
            item_index.use_search_threads(0)
    finally:
        item_index.use_search_threads(1)


def test_export_writes_the_index_only_when_asked(ann_artifacts, ml100k_artifacts):
    for role, metric in (("retriever", "inner_product"), ("ranker", "cosine")):
        manifest = read_manifest(ann_artifacts[role], ARTIFACT_KIND)  # hashes cover the index
        ann = manifest["ann"]
        assert {INDEX_FILE, QUERIES_FILE} <= set(manifest["files"])
        assert ann["metric"] == metric and ann["kind"] == ann_index.IVF_KIND
        assert ann["recall_at_100"] >= ann["target_recall"] == 0.95
        assert ann["n_items"] == 1682 and ann["nlist"] == 43 and ann["queries"] == 256
        queries = np.load(ann_artifacts[role] / QUERIES_FILE, allow_pickle=False)
        assert queries.shape == (256, manifest["dim"]) and queries.dtype == np.float32
        auto = read_manifest(ml100k_artifacts[role], ARTIFACT_KIND)  # 1,682 items: no index
        assert "ann" not in auto and INDEX_FILE not in auto["files"]


def test_the_retriever_loads_the_index_without_building_it(ann_artifacts, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("serving must not build an index")

    monkeypatch.setattr(faiss, "IndexIVFFlat", no_build)
    monkeypatch.setattr(faiss, "IndexHNSWFlat", no_build)
    retriever = Retriever.load(ann_artifacts["retriever"])  # index: auto
    exact = Retriever.load(ann_artifacts["retriever"], "exact")
    assert retriever.index.method == "ann" and exact.index.method == "exact"
    assert retriever.index.ann.recall >= 0.95
    history = ["50", "172", "181"]
    requests = [
        RetrievalRequest(history, {"ts": 1_700_000_000}, "1", ["100"], 100),
        RetrievalRequest([], {}, None, [], 30),
    ]
    warm, cold = retriever.retrieve(requests)
    assert len(warm.item_ids) == 100 and len(cold.item_ids) == 30
    assert not {"50", "172", "181", "100"} & set(warm.item_ids)
    truth = exact.retrieve(requests)[0]
    assert len(set(warm.item_ids) & set(truth.item_ids)) >= 90


def test_index_ann_without_a_retrieval_index_is_refused(ann_artifacts, ml100k_artifacts):
    with pytest.raises(DataError, match=r"has no ANN index.*--ann on") as exc:
        Retriever.load(ml100k_artifacts["retriever"], "ann")
    one_line(exc)
    with pytest.raises(DataError, match="similar-items"):
        Retriever.load(ann_artifacts["ranker"], "ann")  # SASRec: a cosine index
    assert Retriever.load(ann_artifacts["ranker"]).index.method == "exact"  # auto


def test_similar_items_come_from_the_rankers_index(ann_artifacts, ml100k_artifacts):
    ranker = Ranker.load(ann_artifacts["ranker"])
    exact = Ranker.load(ml100k_artifacts["ranker"])
    assert ranker.similar_index.method == "ann" and exact.similar_index.method == "exact"
    overlap = []
    for item in ("50", "172", "1", "1682"):
        got = ranker.similar(item, 20)
        assert len(got.item_ids) == 20 and item not in got.item_ids
        assert got.scores == sorted(got.scores, reverse=True) and max(got.scores) <= 1 + 1e-5
        overlap.append(len(set(got.item_ids) & set(exact.similar(item, 20).item_ids)) / 20)
    assert np.mean(overlap) >= 0.9
    assert ranker.similar("not-an-item", 5) is None


def test_an_index_of_another_artifact_is_refused(ann_artifacts, tmp_path, monkeypatch):
    """Same dim and item count (both models have dim 32 on ML-100K): only the recall check
    at load can tell that the retriever's index does not index the ranker's vectors."""
    source = ann_artifacts["retriever"] / INDEX_FILE

    def swap(dst: Path) -> None:
        shutil.copy(source, dst / INDEX_FILE)

    foreign = copy_with_hashes(ann_artifacts["ranker"], tmp_path / "foreign", swap)
    read_manifest(foreign, ARTIFACT_KIND)  # the hashes agree
    with pytest.raises(DataError, match="does not match this artifact's item vectors") as exc:
        Ranker.load(foreign)
    one_line(exc)

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(ann_index, "PQ_MIN_ITEMS", 10**9)  # an IVF index, as the manifest says
    vectors = clustered(1682, 8)
    build_ann(vectors, vectors[1:65], "inner_product", None, scratch, "test")

    def narrow(dst: Path) -> None:
        shutil.copy(scratch / INDEX_FILE, dst / INDEX_FILE)

    wrong = copy_with_hashes(ann_artifacts["retriever"], tmp_path / "dim", narrow)
    with pytest.raises(DataError, match=r"indexes 1682 vectors of dim 8.*another artifact"):
        Retriever.load(wrong)


def test_a_corrupt_or_missing_index_is_refused_in_one_line(ann_artifacts, tmp_path):
    def truncate(dst: Path) -> None:
        data = (dst / INDEX_FILE).read_bytes()
        (dst / INDEX_FILE).write_bytes(data[: len(data) // 2])

    flipped = tmp_path / "flipped"
    shutil.copytree(ann_artifacts["retriever"], flipped)
    data = bytearray((flipped / INDEX_FILE).read_bytes())
    data[-100:] = bytes(100)
    (flipped / INDEX_FILE).write_bytes(bytes(data))
    cases = {
        flipped: r"item_index\.faiss does not match the hash",  # read_manifest
        copy_with_hashes(ann_artifacts["retriever"], tmp_path / "truncated", truncate): (
            "is not a readable FAISS index"
        ),
        copy_with_hashes(
            ann_artifacts["retriever"],
            tmp_path / "missing",
            lambda dst: (dst / INDEX_FILE).unlink(),
        ): r"item_index\.faiss is missing",
        copy_with_hashes(
            ann_artifacts["retriever"],
            tmp_path / "no-queries",
            lambda dst: (dst / QUERIES_FILE).write_bytes(b"not npy"),
        ): r"cannot read .*ann_queries\.npy",
    }
    for path, message in cases.items():
        with pytest.raises(DataError, match=message) as exc:
            Retriever.load(path)
        one_line(exc)


def test_a_hot_swap_loads_the_new_dirs_own_index(ann_artifacts, ml100k_artifacts, tmp_path):
    slots = ModelSlots(lambda path: Retriever.load(path, "auto"))
    assert slots.apply({"main": str(ml100k_artifacts["retriever"])}) == {}
    assert slots.get("main").index.method == "exact"
    assert slots.apply({"main": str(ann_artifacts["retriever"])}) == {}
    current = slots.get("main")
    assert current.index.method == "ann"
    foreign = copy_with_hashes(
        ann_artifacts["retriever"],
        tmp_path / "foreign",
        lambda dst: shutil.copy(ann_artifacts["ranker"] / INDEX_FILE, dst / INDEX_FILE),
    )
    errors = slots.apply({"main": str(foreign)})
    assert "does not match this artifact's item vectors" in errors["main"]
    assert slots.get("main") is current


def test_exact_top_and_recall_agree_with_a_plain_sort():
    vectors = clustered(300, 8, seed=3)
    queries = vectors[1:20]
    truth = exact_top(vectors, queries, 10)
    brute = np.argsort(-(queries @ vectors[1:].T), axis=1)[:, :10] + 1
    assert recall(truth, brute) == 1.0 and recall(brute[:, :5], truth) == 0.5
    unit = unit_rows(vectors)
    assert np.allclose(np.linalg.norm(unit[1:], axis=1), 1) and not unit[0].any()
