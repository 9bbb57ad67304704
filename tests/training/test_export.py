"""`recstack export`: SASRec checkpoint -> ONNX artifact dir, parity with torch, and refusals.

Two-tower (RetrievalTask) exports: test_export_two_tower.py.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from train_configs import SASREC, write_config

from recstack.artifact_manifest import ARTIFACT_KIND, ModelKind, read_artifact_manifest
from recstack.cli import main
from recstack.errors import DataError, RecstackError
from recstack.manifest import read_manifest
from recstack.schema import MANIFEST_FILE
from recstack.training.export import export_cmd
from recstack.training.tasks.next_item import NextItemTask


def train(tmp_path: Path, dataset: Path, task=None) -> Path:
    config = write_config(tmp_path, dataset, task or SASREC, max_epochs=2)
    assert main(["train", "--config", str(config)]) == 0
    return tmp_path / "run" / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def sasrec_ckpt(tmp_path_factory, chain_dir) -> Path:
    return train(tmp_path_factory.mktemp("sasrec"), chain_dir)


def test_export_writes_an_artifact_that_scores_like_torch(tmp_path, sasrec_ckpt):
    out = tmp_path / "artifacts" / "sasrec" / "v1"
    assert main(["export", "--ckpt", str(sasrec_ckpt), "--out", str(out)]) == 0
    manifest = read_manifest(out, ARTIFACT_KIND)  # every file's hash checks out
    assert set(manifest["files"]) == {
        "sasrec.onnx", "item_embeddings.npy", "items.parquet", "popularity.npy"
    }  # fmt: skip
    popularity = np.load(out / "popularity.npy")
    assert popularity[0] == 0 and popularity.sum() == 40 * 12  # every event of the chain log
    assert manifest["model_kind"] == "sasrec" and manifest["onnx"]["opset"] >= 17
    assert manifest["parity"]["max_abs_diff"] < 1e-4 and len(manifest["parity"]["checks"]) >= 4
    assert manifest["training"]["test"]["ndcg@10"] >= 0 and manifest["vocab"]["dataset_hash"]
    assert manifest["history_len"] == 16 and "item_tower" not in manifest
    typed = read_artifact_manifest(out)
    assert typed.model_kind is ModelKind.SASREC and typed.history_len == 16

    # the artifact's next-item scores equal the checkpoint's, for a batch not used at export
    task = NextItemTask.load_from_checkpoint(sasrec_ckpt, map_location="cpu", weights_only=False)
    net = task.scoring_net.eval()
    items = torch.tensor([[3, 4, 5, 0], [7, 8, 9, 10], [1, 0, 0, 0]])
    lengths = torch.tensor([3, 4, 1])
    with torch.no_grad():
        expected = net.score_all(items, lengths).numpy()
    session = ort.InferenceSession(str(out / "sasrec.onnx"), providers=["CPUExecutionProvider"])
    state = session.run(["state"], {"items": items.numpy(), "lengths": lengths.numpy()})[0]
    scores = state @ np.load(out / "item_embeddings.npy").T
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_a_cosine_sasrec_learns_the_chain_and_exports_unit_item_vectors(tmp_path, chain_dir):
    config = write_config(tmp_path, chain_dir, SASREC)
    cosine = [
        "--model.init_args.model.similarity=cosine",
        "--model.init_args.model.temperature=0.05",
    ]
    stop_when_fitted = ["--early_stopping.stopping_threshold", "0.99"]  # val NDCG@10
    assert main(["train", "--config", str(config), *cosine, *stop_when_fitted]) == 0
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["test"]["hr@10"] >= 0.95, report["test"]
    out = tmp_path / "artifact"
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    embeddings = np.load(out / "item_embeddings.npy")
    np.testing.assert_allclose(np.linalg.norm(embeddings[1:], axis=1), 1.0, atol=1e-5)
    task = NextItemTask.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False)
    items, lengths = torch.tensor([[3, 4, 5, 0], [7, 8, 9, 10]]), torch.tensor([3, 4])
    with torch.no_grad():
        expected = task.scoring_net.eval().score_all(items, lengths).numpy()
    session = ort.InferenceSession(str(out / "sasrec.onnx"), providers=["CPUExecutionProvider"])
    state = session.run(["state"], {"items": items.numpy(), "lengths": lengths.numpy()})[0]
    np.testing.assert_allclose(state @ embeddings.T, expected, atol=1e-4)


def test_a_corrupt_or_incomplete_artifact_is_refused(tmp_path, sasrec_ckpt):
    out = tmp_path / "v1"
    export_cmd.export(sasrec_ckpt, out)
    onnx_file = out / "sasrec.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not match the hash"):
        read_manifest(out, ARTIFACT_KIND)
    (out / "item_embeddings.npy").unlink()
    with pytest.raises(DataError, match="missing"):
        read_manifest(out, ARTIFACT_KIND)


def test_export_refuses_to_overwrite_and_leaves_nothing_half_written(
    tmp_path, sasrec_ckpt, capsys, monkeypatch
):
    out = tmp_path / "v1"
    export_cmd.export(sasrec_ckpt, out)
    assert main(["export", "--ckpt", str(sasrec_ckpt), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err

    def broken(net, staging):
        (staging / "sasrec.onnx").write_bytes(b"half")
        raise RuntimeError("export crashed")

    # export_cmd imports the exporter when it runs (recstack --help stays light)
    monkeypatch.setattr("recstack.training.export.sasrec_onnx.export_sasrec", broken)
    with pytest.raises(RuntimeError):
        export_cmd.export(sasrec_ckpt, tmp_path / "v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]  # no v2, no staging dir


def _moved_run(tmp_path: Path, sasrec_ckpt: Path, dataset: str) -> Path:
    """A copy of the run whose config.yaml names `dataset` (the dataset moved since)."""
    run = tmp_path / "run"
    shutil.copytree(sasrec_ckpt.parent.parent, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["dataset"] = dataset
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run / "checkpoints" / sasrec_ckpt.name


def test_a_moved_dataset_is_named_with_dataset(tmp_path, sasrec_ckpt, chain_dir, capsys):
    ckpt = _moved_run(tmp_path, sasrec_ckpt, str(tmp_path / "gone"))
    out = tmp_path / "v1"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "gone" in err and "pass --dataset DIR" in err
    assert not out.exists()
    args = ["export", "--ckpt", str(ckpt), "--out", str(out), "--dataset", str(chain_dir)]
    assert main(args) == 0
    assert read_artifact_manifest(out).training.checkpoint == str(ckpt)


def test_a_dataset_the_run_did_not_train_on_is_refused(tmp_path, sasrec_ckpt, chain_dir):
    other = tmp_path / "other"
    shutil.copytree(chain_dir, other)
    manifest = json.loads((other / MANIFEST_FILE).read_text())
    manifest["content_hash"] = "f" * 64  # as if prepared from another log
    (other / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="not the dataset the run trained on") as exc:
        export_cmd.export(sasrec_ckpt, tmp_path / "v1", dataset=other)
    assert "--dataset" in str(exc.value) and not (tmp_path / "v1").exists()


def test_bad_inputs_get_one_line_errors(tmp_path, capsys):
    assert (
        main(["export", "--ckpt", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "a")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


class NotAWeight:
    """Stands for any object a tampered checkpoint could smuggle in to run on unpickling."""


def test_a_checkpoint_holding_other_objects_is_refused_unread(tmp_path, sasrec_ckpt):
    checkpoint = torch.load(sasrec_ckpt, map_location="cpu", weights_only=True)
    checkpoint["extra"] = NotAWeight()
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    with pytest.raises(RecstackError, match="weights only") as exc:
        export_cmd._load_task(tampered, f"{NextItemTask.__module__}.NextItemTask")
    assert "\n" not in str(exc.value)
    assert export_cmd._load_task(sasrec_ckpt, f"{NextItemTask.__module__}.NextItemTask")


def test_the_transition_term_exports_and_serves_as_torch_scores_it(tmp_path, chain_dir):
    from recstack.training.data.datamodule import RecDataModule
    from serving.full_ranking import full_ranking
    from serving.ranking import Ranker, RankRequest
    from serving.retrieval import RetrievalRequest, Retriever

    config = write_config(tmp_path, chain_dir, SASREC, max_epochs=2)
    assert main(["train", "--config", str(config), "--model.init_args.model.followers=4"]) == 0
    ckpt, out = tmp_path / "run" / "checkpoints" / "best.ckpt", tmp_path / "artifact"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    manifest = read_artifact_manifest(out)
    assert manifest.followers == 4 and list(manifest.onnx.outputs) == [
        "state",
        "followers",
        "bonus",
    ]
    outputs = {c["output"] for c in manifest.parity.checks}
    assert outputs == {"state", "followers", "bonus"} and manifest.parity.max_abs_diff < 1e-4

    task = NextItemTask.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False)
    net = task.scoring_net.eval()
    items, lengths = torch.tensor([[3, 4, 5, 0], [7, 8, 9, 10]]), torch.tensor([3, 4])
    with torch.no_grad():
        expected = net.score_all(items, lengths).numpy()  # with the bonus
        plain = net.last_hidden(items, lengths) @ net.all_item_vectors().T
    assert np.abs(expected - plain.numpy()).max() > 0.1  # the term changes the scores

    ranker = Ranker.load(out)
    ids = ranker.artifact.catalog.item_ids
    rows = zip(items.tolist(), lengths.tolist(), strict=True)
    histories = [[ids[i] for i in row[:n]] for row, n in rows]
    for row, history in enumerate(histories):
        ranked = ranker.rank([RankRequest(history, ids[1:], k=len(ids) - 1)])[0]
        got = dict(zip(ranked.item_ids, ranked.scores, strict=True))
        want = {ids[i]: float(expected[row, i]) for i in range(1, len(ids))}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-4)

    retriever = Retriever.load(out, "exact")
    for row, history in enumerate(histories):
        [found] = retriever.retrieve([RetrievalRequest(history, {}, None, exclude=[], n=5)])
        scores = expected[row].copy()
        scores[0] = -np.inf
        scores[items[row, : lengths[row]].numpy()] = -np.inf  # the history is excluded
        best = np.argsort(-scores, kind="stable")[:5]
        assert found.item_ids == [ids[i] for i in best]
        np.testing.assert_allclose(found.scores, scores[best], atol=1e-4)

    eval_set = RecDataModule(chain_dir).eval_set("test")  # the torch-free full ranking
    top = full_ranking(ranker.artifact, eval_set, k=5).top
    for row in range(eval_set.n_users):
        history = torch.from_numpy(eval_set.history(row)[-16:].astype(np.int64))[None, :]
        with torch.no_grad():
            scores = net.score_all(history, torch.tensor([history.shape[1]]))[0].numpy()
        scores[[0, *eval_set.history(row)]] = -np.inf
        np.testing.assert_array_equal(top[row], np.argsort(-scores, kind="stable")[:5])
