"""`recstack export` of a two-tower (RetrievalTask) run: both towers match torch, cold users
included, and features.json alone reproduces the codes training computed."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl
import pytest
import torch
from chain_log import CHAIN_USERS, write_chain_log
from train_configs import RETRIEVAL, write_config

from recstack.artifact_manifest import ARTIFACT_KIND, ModelKind, read_artifact_manifest
from recstack.cli import main
from recstack.dataset_dir import load_dataset
from recstack.datasets.prepare import prepare
from recstack.datasets.sources.tabular import ColumnMapping
from recstack.errors import DataError, RecstackError
from recstack.feature_codes import encode
from recstack.manifest import read_manifest
from recstack.schema import TS, USER_IDX
from recstack.training.data.features import FeatureVocab, context_codes, user_codes
from recstack.training.export import export_cmd, onnx_common
from recstack.training.export.two_tower_onnx import export_two_tower
from recstack.training.models.two_tower import FeatureSizes, TwoTower, TwoTowerConfig
from recstack.training.tasks.retrieval import RetrievalTask

AGES = [12, 18, 24, 25, 44, None, 56, 70]


@pytest.fixture(scope="module")
def users_dataset(tmp_path_factory) -> Path:
    """The chain log (device context) with user attributes: gender, a numeric age with gaps
    (bucketed), occupation."""
    root = tmp_path_factory.mktemp("chain-users")
    raw = write_chain_log(root / "log.csv")
    pl.DataFrame(
        {
            "uid": [f"u{u}" for u in range(CHAIN_USERS)],
            "gender": [("M", "F", None)[u % 3] for u in range(CHAIN_USERS)],
            "age": [AGES[u % len(AGES)] for u in range(CHAIN_USERS)],
            "occupation": [
                ("student", "engineer", "artist", "other")[u % 4] for u in range(CHAIN_USERS)
            ],
        }
    ).write_csv(root / "users.csv")
    mapping = ColumnMapping(user="uid", item="iid", timestamp="t", context=["device"])
    out = root / "ds"
    prepare(source=f"csv:{raw}", out=out, columns=mapping, users=root / "users.csv", quiet=True)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, users_dataset) -> Path:
    run = tmp_path_factory.mktemp("two-tower")
    config = write_config(run, users_dataset, RETRIEVAL, max_epochs=2)
    assert main(["train", "--config", str(config)]) == 0
    return run / "run" / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, trained) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "two-tower" / "v1"
    assert main(["export", "--ckpt", str(trained), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def task(trained) -> RetrievalTask:
    task = RetrievalTask.load_from_checkpoint(trained, map_location="cpu", weights_only=False)
    task.scoring_net.eval()
    return task


def test_the_artifact_holds_both_towers_the_features_and_the_figures(artifact):
    manifest = read_manifest(artifact, ARTIFACT_KIND)  # every file's hash checks out
    assert set(manifest["files"]) == {
        "user_tower.onnx", "item_tower.onnx", "item_embeddings.npy", "features.json",
        "user_features.parquet", "items.parquet", "popularity.npy",
    }  # fmt: skip
    assert manifest["model_kind"] == "two_tower" and manifest["onnx"]["file"] == "user_tower.onnx"
    assert manifest["onnx"]["inputs"] == {
        "history": ["batch", "length", "int64"],
        "lengths": ["batch", "int64"],
        "context": ["batch", 3, "int64"],
        "user": ["batch", 3, "int64"],
    }
    assert manifest["onnx"]["columns"] == {
        "context": ["hour", "weekday", "device"],
        "user": ["gender", "age", "occupation"],
    }
    assert manifest["onnx"]["outputs"] == {"user_vec": ["batch", 32, "float32"]}
    assert manifest["history_len"] == 16 and manifest["dim"] == 32
    assert manifest["item_tower"]["inputs"] == {"item_idx": ["n", "int64"]}
    assert manifest["item_embeddings"]["shape"] == [31, 32] and manifest["n_items"] == 30
    assert manifest["similarity"] == "cosine" and manifest["temperature"] == 0.05
    assert manifest["user_features"]["columns"] == ["gender", "age", "occupation"]
    parity = manifest["parity"]
    assert parity["max_abs_diff"] <= parity["atol"] == 1e-4
    checks = parity["checks"]
    assert {c["tower"] for c in checks} == {"user", "item", "item_embeddings"}
    user_checks = [c for c in checks if c["tower"] == "user"]
    assert any(c["batch"] == 1 and c["length"] == 1 for c in user_checks)
    assert any(c["cold"] == c["batch"] == 1 for c in user_checks)
    assert manifest["training"]["test"]["ndcg@10"] >= 0 and manifest["vocab"]["dataset_hash"]
    assert manifest["popularity"]["shape"] == [31]
    embeddings = np.load(artifact / "item_embeddings.npy")
    assert embeddings.dtype == np.float32 and not embeddings[0].any()  # PAD row is zero
    typed = read_artifact_manifest(artifact)  # the JSON above is the typed manifest, dumped
    assert typed.model_dump(mode="json", exclude_none=True) == manifest


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch,length,cold", [(1, 1, 0), (1, 1, 1), (4, 5, 2), (6, 16, 1)])
def test_user_vectors_and_scores_match_torch(artifact, task, batch, length, cold):
    generator = torch.Generator().manual_seed(batch * 100 + length)
    history = torch.randint(1, 31, (batch, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[batch - cold :] = 0
    history[torch.arange(length)[None, :] >= lengths[:, None]] = 0
    context = torch.randint(0, 4, (batch, 3), generator=generator)
    user = torch.randint(-1, 5, (batch, 3), generator=generator)  # -1, 4: out of range
    net = task.scoring_net
    with torch.no_grad():
        expected = task.user_vectors(history, lengths, context, user, net).numpy()
        fields = [
            task._fields(context, task.sizes["context"]),
            task._fields(user, task.sizes["user"]),
        ]
        scores = net.score_all(history, lengths, *fields).numpy()  # logits [B, n_items + 1]
    feeds = {"history": history, "lengths": lengths, "context": context, "user": user}
    got = _session(artifact / "user_tower.onnx").run(
        ["user_vec"], {k: v.numpy() for k, v in feeds.items()}
    )[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    onnx_scores = got @ np.load(artifact / "item_embeddings.npy").T / 0.05
    np.testing.assert_allclose(onnx_scores[:, 1:], scores[:, 1:], atol=1e-2)  # logits: x 20


def test_item_tower_matches_torch(artifact, task):
    item_idx = np.array([30, 1, 1, 17, 0], dtype=np.int64)
    got = _session(artifact / "item_tower.onnx").run(["item_vec"], {"item_idx": item_idx})[0]
    with torch.no_grad():
        expected = task.scoring_net.item_vectors(torch.from_numpy(item_idx)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with torch.no_grad():
        catalogue = task.scoring_net.all_item_vectors().numpy()
    np.testing.assert_allclose(np.load(artifact / "item_embeddings.npy")[1:], catalogue[1:])


def _encode(entry: dict, raw: list) -> np.ndarray:
    """A server's encoder, written from features.json's "codes" text alone."""
    if entry["kind"] == "hour_of_day":
        return (np.asarray(raw) % 86400) // 3600 + 1
    if entry["kind"] == "weekday":
        return ((np.asarray(raw) // 86400) + 3) % 7 + 1
    if entry["kind"] == "vocab":
        return np.array([entry["values"].index(v) + 1 if v in entry["values"] else 0 for v in raw])
    v = np.array([np.nan if x is None else x for x in raw], dtype=float)
    codes = np.searchsorted(entry["edges"], v, side="right") + 1
    return np.where(np.isnan(v), 0, codes)


def test_features_json_alone_reproduces_the_training_codes(artifact, task, users_dataset):
    spec = json.loads((artifact / "features.json").read_text())
    assert spec["history_len"] == 16 and spec["similarity"] == "cosine" and spec["codes"]
    assert [e["kind"] for e in spec["context"]] == ["hour_of_day", "weekday", "vocab"]
    assert [e["kind"] for e in spec["user"]] == ["vocab", "buckets", "vocab"]
    vocab = FeatureVocab(**task.vocab)
    data = load_dataset(users_dataset)

    events = data.interactions.sample(50, seed=0)
    expected = context_codes(events, vocab)
    for j, entry in enumerate(spec["context"]):
        raw = events[TS if entry["kind"] != "vocab" else entry["name"]].to_list()
        np.testing.assert_array_equal(_encode(entry, raw), expected[:, j], err_msg=entry["name"])

    users = data.users.sort(USER_IDX)
    expected = user_codes(users, vocab)
    assert expected[:, 1].min() == 0 and len(set(expected[:, 1])) > 4  # NaN and many buckets
    stored = pl.read_parquet(artifact / "user_features.parquet")
    assert stored.columns == ["user_id", "gender", "age", "occupation"]
    assert stored["user_id"].to_list() == users["user_id"].to_list()
    np.testing.assert_array_equal(stored.drop("user_id").to_numpy(), expected)
    for j, entry in enumerate(spec["user"]):
        column = users[entry["name"]]
        raw = column.to_list() if entry["kind"] == "buckets" else column.cast(pl.String).to_list()
        np.testing.assert_array_equal(_encode(entry, raw), expected[:, j], err_msg=entry["name"])


def test_reference_encoder_edge_cases():
    buckets = {"kind": "buckets", "edges": [18, 25, 35]}
    np.testing.assert_array_equal(encode(buckets, [None, 17.9, 18, 24, 35, 99]), [0, 1, 2, 2, 4, 4])
    vocab = {"kind": "vocab", "values": ["F", "M"]}
    np.testing.assert_array_equal(encode(vocab, ["M", "F", "x", None]), [2, 1, 0, 0])
    ts = [0, 3600 * 23 + 59, 4 * 86400]  # 1970-01-01 00:00 was a Thursday; +4 days Monday
    np.testing.assert_array_equal(encode({"kind": "hour_of_day"}, ts), [1, 24, 1])
    np.testing.assert_array_equal(encode({"kind": "weekday"}, ts), [4, 4, 1])


def test_a_corrupt_two_tower_artifact_is_refused(tmp_path, artifact):
    out = tmp_path / "v1"
    out.mkdir()
    for file in artifact.iterdir():
        (out / file.name).write_bytes(file.read_bytes())
    read_manifest(out, ARTIFACT_KIND)
    spec = json.loads((out / "features.json").read_text())
    spec["user"][0]["values"].reverse()  # a silent code swap must not go unnoticed
    (out / "features.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="does not match the hash"):
        read_manifest(out, ARTIFACT_KIND)
    (out / "features.json").write_bytes((artifact / "features.json").read_bytes())
    (out / "user_tower.onnx").write_bytes(b"truncated")
    with pytest.raises(DataError, match=r"user_tower\.onnx does not match"):
        read_manifest(out, ARTIFACT_KIND)


def _untrained(n_items: int, context: dict, config: TwoTowerConfig) -> TwoTower:
    return TwoTower(config, FeatureSizes(n_items=n_items, context=context)).eval()


def test_without_user_attributes_the_user_input_is_left_out(tmp_path, chain_dir):
    data = load_dataset(chain_dir)
    vocab = FeatureVocab(context={"device": ["desktop", "mobile"]})
    config = TwoTowerConfig(dim=16, history_len=8, pooling="mean", similarity="dot")
    net = _untrained(data.n_items, {"hour": 25, "weekday": 8, "device": 3}, config)
    fields = export_two_tower(net, vocab, data, tmp_path)
    assert fields.model_kind is ModelKind.TWO_TOWER and fields.history_len == 8
    assert list(fields.onnx.inputs) == ["history", "lengths", "context"]
    assert fields.onnx.columns == {"context": ["hour", "weekday", "device"]}
    assert fields.parity.max_abs_diff <= 1e-4 and fields.similarity == "dot"
    session = _session(tmp_path / "user_tower.onnx")
    assert [i.name for i in session.get_inputs()] == ["history", "lengths", "context"]
    feeds = {
        "history": np.zeros((2, 1), np.int64),  # cold users: one PAD column, lengths 0
        "lengths": np.zeros(2, np.int64),
        "context": np.array([[3, 2, 1], [0, 0, 0]]),
    }
    cold = session.run(None, feeds)[0]
    assert cold.shape == (2, 16) and np.isfinite(cold).all()
    assert json.loads((tmp_path / "features.json").read_text())["user"] == []
    assert pl.read_parquet(tmp_path / "user_features.parquet").columns == ["user_id"]


def test_a_parity_failure_is_refused_and_leaves_nothing(tmp_path, trained, monkeypatch):
    monkeypatch.setattr(onnx_common, "PARITY_ATOL", -1.0)  # nothing can pass
    with pytest.raises(RecstackError, match="differs from torch"):
        export_cmd.export(trained, tmp_path / "v1")
    assert list(tmp_path.iterdir()) == []


def test_unknown_task_classes_are_refused_before_loading(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.write_bytes(b"never read")
    config = {"model": {"class_path": "recstack.training.tasks.base.RecTask"}}
    (run / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "out")]) == 2
    assert "export of RecTask is not built yet" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ordinal_times_train_and_serve_without_hour_or_weekday(tmp_path):
    """Sequence positions (a seqlines: source) are not seconds: the two-tower's hour and
    weekday codes are 0 in training, and the artifact reads no clock at serving."""
    from recstack.artifact import load_artifact
    from recstack.query import encode as serve_encode

    lines = [f"{u} " + " ".join(str(1 + (u + j) % 12) for j in range(6)) for u in range(1, 31)]
    (tmp_path / "seqs.txt").write_text("\n".join(lines) + "\n")
    prepare(source=f"seqlines:{tmp_path / 'seqs.txt'}", out=tmp_path / "ds", quiet=True)
    config = write_config(tmp_path / "train", tmp_path / "ds", RETRIEVAL, max_epochs=1)
    assert main(["train", "--config", str(config)]) == 0
    out = tmp_path / "artifact"
    ckpt = tmp_path / "train" / "run" / "checkpoints" / "best.ckpt"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    context = json.loads((out / "features.json").read_text())["context"]
    assert [(c["name"], c["kind"]) for c in context[:2]] == [
        ("hour", "untimed"),
        ("weekday", "untimed"),
    ]
    artifact = load_artifact(out)
    noon, midnight = {"ts": 1_700_000_000 + 12 * 3600}, {"ts": 1_700_000_000}
    a = serve_encode(artifact, [[1, 2]], [noon], [None])
    b = serve_encode(artifact, [[1, 2]], [midnight], [None])
    assert np.array_equal(a, b)  # the request's clock changes nothing
    vocab = FeatureVocab(time_of_day=False)
    frame = pl.DataFrame({TS: [0, 5, 90_000]})
    assert not context_codes(frame, vocab)[:, :2].any()
