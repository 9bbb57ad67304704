"""`recstack data forget`: users leave a prepared dataset and an artifact's user features; the
files still verify, user_idx stays dense, the erasure is on record, bad input is one line."""

import json

import polars as pl
import pytest
from tiny_data import prepared_log

from recstack.cli import main
from recstack.dataset_dir import load_dataset
from recstack.event_log_format import user_hash
from recstack.manifest import CONTENT_HASH, read_manifest, write_manifest
from recstack.schema import ITEM_ID, ITEM_IDX, MANIFEST_FILE, TS, USER_ID, USER_IDX


@pytest.fixture
def dataset(tmp_path):
    """3 users: u1 (idx 0), u2 (idx 1, to forget: u3 must move to idx 1), u3."""
    return prepared_log(
        tmp_path,
        ["u1", "u2", "u1", "u3", "u2", "u3", "u2", "u1"],
        ["a", "b", "c", "d", "e", "a", "c", "f"],
        [1, 2, 3, 4, 5, 6, 7, 8],
    )


def histories(path) -> dict[str, list[str]]:
    data = load_dataset(path)  # verifies every file against the manifest
    return dict(
        data.interactions.sort([USER_IDX, TS])
        .join(data.items.select(ITEM_IDX, ITEM_ID), on=ITEM_IDX, maintain_order="left")
        .join(data.users.select(USER_IDX, USER_ID), on=USER_IDX, maintain_order="left")
        .group_by(USER_ID, maintain_order=True)
        .agg(ITEM_ID)
        .iter_rows()
    )


def test_forget_removes_a_user_from_a_prepared_dataset(dataset, capsys):
    before, old = histories(dataset), read_manifest(dataset, "dataset")
    rows = load_dataset(dataset).interactions
    assert main(["data", "forget", "--dataset", str(dataset), "--user", "u2", "--user", "x"]) == 0
    out = capsys.readouterr().out
    assert "removed user(s) u2" in out and "user(s) x not present" in out
    assert histories(dataset) == {u: h for u, h in before.items() if u != "u2"}
    data = load_dataset(dataset)
    assert data.users[USER_IDX].to_list() == [0, 1]  # dense: u3 moved from 2 to 1
    moved = pl.col(USER_IDX) - (pl.col(USER_IDX) > 1).cast(pl.Int32)
    expected = rows.filter(pl.col(USER_IDX) != 1).with_columns(moved)  # same order and dtypes
    assert data.interactions.equals(expected)
    manifest = data.manifest
    assert manifest["counts"] | {"items": 0} == {"users": 2, "interactions": 5, "items": 0}
    assert all(sum(c.values()) == 5 for c in manifest["splits"]["counts"].values())
    assert [e["user_hash"] for e in manifest["erasures"]] == [user_hash("u2")]
    assert "u2" not in (dataset / MANIFEST_FILE).read_text()  # the ledger holds hashes only
    # the seed marker's hash stays: a store seeded before does not re-seed everyone
    assert manifest["original_content_hash"] == old[CONTENT_HASH] != manifest[CONTENT_HASH]
    assert not list(dataset.glob(".*"))  # no temp file left

    assert main(["data", "forget", "--dataset", str(dataset), "--user", "u2"]) == 0  # idempotent
    assert "u2 not present" in capsys.readouterr().out
    assert read_manifest(dataset, "dataset") == manifest  # nothing rewritten, no new entry


def test_forget_removes_a_user_from_an_artifacts_user_features(tmp_path, capsys):
    artifact = tmp_path / "two-tower" / "v1"
    artifact.mkdir(parents=True)
    pl.DataFrame({USER_ID: [1, 2, 3], "age": [1, 2, 3]}).write_parquet(
        artifact / "user_features.parquet"
    )
    pl.DataFrame({ITEM_IDX: [1], ITEM_ID: ["a"]}).write_parquet(artifact / "items.parquet")
    write_manifest(
        artifact,
        "artifact",
        model_kind="two_tower",
        user_features={"file": "user_features.parquet"},
    )
    assert main(["data", "forget", "--artifact", str(artifact), "--user", "2"]) == 0
    manifest = read_manifest(artifact, "artifact")  # hashes verify
    assert pl.read_parquet(artifact / "user_features.parquet")[USER_ID].to_list() == [1, 3]
    assert [e["user_hash"] for e in manifest["erasures"]] == [user_hash("2")]


def test_bad_input_is_one_line(dataset, tmp_path, capsys):
    missing = ["data", "forget", "--dataset", str(tmp_path / "nope"), "--user", "u1"]
    assert main(missing) == 2
    assert main(["data", "forget", "--dataset", str(dataset)]) == 2  # no --user
    (dataset / "users.parquet").write_bytes(b"tampered")
    assert main(["data", "forget", "--dataset", str(dataset), "--user", "u1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err), err
    assert "does not exist" in err[0] and "does not match the hash" in err[2]
    assert json.loads((dataset / MANIFEST_FILE).read_text()).get("erasures") is None
