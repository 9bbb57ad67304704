"""`recstack data prepare`: quality report, partition invariance, k-core, atomic writes, manifests."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recstack.dataset_dir import load_dataset
from recstack.datasets.prepare import prepare
from recstack.datasets.sources.tabular import ColumnMapping
from recstack.errors import DataError
from recstack.schema import (
    INTERACTIONS_FILE,
    ITEM_IDX,
    MANIFEST_FILE,
    QUALITY_FILE,
    SPLIT_LOO,
    TEST,
    TS,
    USER_IDX,
    VALID,
)

MAPPING = ColumnMapping(user="uid", item="iid", timestamp="t", context=["device"])
NOW = 1_700_000_000


def _raw(tmp_path, rows, name="log.csv"):
    path = tmp_path / name
    pl.DataFrame(rows, schema=["uid", "iid", "t", "device"], orient="row").write_csv(path)
    return path


def _prepare(tmp_path, raw, **kwargs):
    out = tmp_path / kwargs.pop("name", "ds")
    prepare(source=f"csv:{raw}", out=out, columns=MAPPING, quiet=True, **kwargs)
    return out


def test_quality_report_counts_every_dropped_row_with_its_reason(tmp_path):
    rows = [
        ("u1", "a", NOW, "mobile"),
        ("u1", "b", NOW + 10, "mobile"),
        ("u1", "b", NOW + 10, "mobile"),  # exact duplicate
        ("u1", "c", NOW + 5, "tv"),  # earlier than the previous row of u1: non-monotone (kept)
        (None, "a", NOW, "tv"),  # null user id
        ("u2", None, NOW, "tv"),  # null item id
        ("u2", "a", -5, "tv"),  # impossible: before 1970
        ("u2", "a", NOW * 3, "tv"),  # impossible: far future
        ("u2", "zz", NOW, "tv"),  # not in catalogue
        ("u2", "a", NOW + 1, "tv"),
        ("u2", "b", NOW + 100, "tv"),
        *[("bot", "abc"[i % 3], NOW + i // 3, "desktop") for i in range(30)],  # 3.3 a second
    ]
    raw = _raw(tmp_path, rows)
    catalogue = tmp_path / "items.csv"
    pl.DataFrame({"iid": ["a", "b", "c", "d"], "title": ["A", "B", "C", "D"]}).write_csv(catalogue)
    out = _prepare(tmp_path, raw, items=catalogue, max_events_per_second=2)
    report = json.loads((out / QUALITY_FILE).read_text())
    assert report["rows_read"] == len(rows)
    assert report["dropped"] == {
        "null_ids": 2,
        "impossible_timestamps": 2,
        "exact_duplicates": 1,
        "items_missing_from_catalogue": 1,
        "users_above_event_rate": 30,
    }
    assert report["flagged"] == {"non_monotone_timestamps": 1}
    assert report["rows_kept"] == 5
    assert report["catalogue_items_without_events"] == 1  # "d"
    ds = load_dataset(out)
    assert ds.interactions.height == 5 and ds.n_users == 2 and ds.n_items == 3
    # u1's events come out in time order: a (t0), c (t0+5), b (t0+10); b is the LOO test item
    u1 = ds.interactions.filter(pl.col(USER_IDX) == 0)
    assert u1[TS].is_sorted()
    titles = ds.items.join(u1, on=ITEM_IDX).sort(TS)["title"].to_list()
    assert titles == ["A", "C", "B"]
    assert u1[SPLIT_LOO].to_list()[-1] == TEST


def test_non_monotone_drop_policy(tmp_path):
    raw = _raw(
        tmp_path, [("u", "a", NOW, "tv"), ("u", "b", NOW - 10, "tv"), ("u", "c", NOW + 1, "tv")]
    )
    out = _prepare(tmp_path, raw, non_monotone="drop")
    report = json.loads((out / QUALITY_FILE).read_text())
    assert report["dropped"]["non_monotone_timestamps"] == 1
    assert load_dataset(out).interactions.height == 2


def test_partitions_do_not_change_the_output(tmp_path):
    rows = [
        (f"u{u}", f"i{(u * 7 + k * 3) % 23}", NOW + (k // 2) * 60, ["tv", "mobile"][k % 2])
        for u in range(40)
        for k in range(3 + u % 9)
    ]
    raw = _raw(tmp_path, rows)
    one = load_dataset(_prepare(tmp_path, raw, name="one"))
    many = load_dataset(_prepare(tmp_path, raw, name="many", rows_per_part=7))
    assert many.manifest["counts"] == one.manifest["counts"]
    assert json.loads((many.path / QUALITY_FILE).read_text())["partitions"] > 10
    assert many.interactions.equals(one.interactions)
    assert many.items.equals(one.items) and many.users.equals(one.users)
    assert many.manifest["splits"] == one.manifest["splits"]
    assert many.manifest["vocab"] == one.manifest["vocab"]


def test_the_same_source_prepared_twice_has_the_same_content_hash(tmp_path):
    """Results quote the dataset's content hash; a rerun elsewhere must be able to match it, so
    nothing that varies between runs (step times, creation time) may be in the hashed files."""
    rows = [
        (f"u{u}", f"i{(u * 5 + k) % 17}", NOW + k * 60, "tv") for u in range(30) for k in range(4)
    ]
    raw = _raw(tmp_path, rows)
    first = json.loads((_prepare(tmp_path, raw, name="first") / MANIFEST_FILE).read_text())
    second = json.loads((_prepare(tmp_path, raw, name="second") / MANIFEST_FILE).read_text())
    assert first["files"] == second["files"]
    assert first["content_hash"] == second["content_hash"]
    assert set(first["step_seconds"]) == set(second["step_seconds"])  # kept, outside the hash
    assert "step_seconds" not in json.loads((tmp_path / "first" / QUALITY_FILE).read_text())


def test_k_core_is_a_fixed_point(tmp_path):
    # u3 has one event; dropping it leaves item z with one event; dropping z leaves u2 with 1
    rows = [
        ("u1", "x", NOW, "tv"),
        ("u1", "y", NOW + 1, "tv"),
        ("u4", "x", NOW, "tv"),
        ("u4", "y", NOW + 1, "tv"),
        ("u2", "x", NOW, "tv"),
        ("u2", "z", NOW + 1, "tv"),
        ("u3", "z", NOW, "tv"),
    ]
    out = _prepare(tmp_path, _raw(tmp_path, rows), k_core=2, rows_per_part=2)
    ds = load_dataset(out)
    assert ds.users["user_id"].to_list() == ["u1", "u4"]
    assert ds.items["item_id"].to_list() == ["x", "y"]
    assert json.loads((out / QUALITY_FILE).read_text())["dropped"]["k_core"] == 3


def test_failed_prepare_leaves_nothing_half_written(tmp_path):
    raw = _raw(tmp_path, [("u", "a", NOW, "tv")])
    with pytest.raises(DataError, match="uid"):
        prepare(
            source=f"csv:{raw}",
            out=tmp_path / "ds",
            quiet=True,
            columns=ColumnMapping(user="user", item="iid", timestamp="t"),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_existing_dataset_is_not_overwritten_without_flag(tmp_path):
    raw = _raw(tmp_path, [("u", "a", NOW, "tv"), ("u", "b", NOW + 1, "tv")])
    out = _prepare(tmp_path, raw)
    before = (out / MANIFEST_FILE).read_text()
    with pytest.raises(DataError, match="--overwrite"):
        _prepare(tmp_path, raw)
    assert (out / MANIFEST_FILE).read_text() == before
    _prepare(tmp_path, raw, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "log.csv"]


def test_loading_refuses_tampered_or_newer_datasets(tmp_path):
    out = _prepare(tmp_path, _raw(tmp_path, [("u", "a", NOW, "tv"), ("u", "b", NOW + 1, "tv")]))
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    (out / MANIFEST_FILE).write_text(json.dumps(manifest | {"schema_version": 99}))
    with pytest.raises(DataError, match="schema version 99"):
        load_dataset(out)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest | {"kind": "artifact"}))
    with pytest.raises(DataError, match="expected a 'dataset' directory"):
        load_dataset(out)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    with open(out / INTERACTIONS_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(DataError, match="does not match the hash"):
        load_dataset(out)
    (out / MANIFEST_FILE).unlink()
    with pytest.raises(DataError, match=r"manifest\.json is missing"):
        load_dataset(out)


def test_cli_bad_input_is_one_line_with_exit_2(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for args in (
        [
            "data",
            "prepare",
            "--source",
            f"csv:{empty}",
            "--out",
            str(tmp_path / "o"),
            "--columns.user",
            "u",
            "--columns.item",
            "i",
            "--columns.timestamp",
            "t",
        ],
        ["data", "prepare", "--source", "nonsense:x", "--out", str(tmp_path / "o")],
        ["eval", "baselines", "--dataset", str(tmp_path / "missing")],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "recstack.cli", *args], capture_output=True, text=True
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_ml100k_loads_with_the_published_counts(ml100k_dir):
    ds = load_dataset(ml100k_dir)
    assert (ds.n_users, ds.n_items, ds.interactions.height) == (943, 1682, 100_000)
    assert ds.manifest["counts"] == {"interactions": 100_000, "users": 943, "items": 1682}
    assert ds.manifest["splits"]["counts"][SPLIT_LOO] == {
        "train": 98_114,
        "valid": 943,
        "test": 943,
    }
    assert {"title", "genres", "year"} <= set(ds.items.columns)
    assert {"gender", "age", "occupation"} <= set(ds.users.columns)
    toy_story = ds.items.filter(pl.col("item_id") == 1)
    assert toy_story["title"].item() == "Toy Story" and toy_story["year"].item() == 1995
    assert ds.interactions[USER_IDX].is_sorted()


@pytest.mark.parametrize(
    "bad",
    [
        {"k_core": 0},
        {"max_events_per_second": 0},
        {"temporal_test_fraction": 0.0},
        {"temporal_valid_fraction": 0.6, "temporal_test_fraction": 0.5},
        {"rows_per_part": 0},
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, bad):
    raw = _raw(tmp_path, [("u", "a", NOW, "tv")])
    with pytest.raises(DataError):
        _prepare(tmp_path, raw, **bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


raw_logs = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 6), st.integers(0, 3)),  # user, item, ts offset
    min_size=1,
    max_size=40,
)


@settings(max_examples=25, deadline=None)
@given(raw_logs, st.integers(1, 6))
def test_prepare_end_to_end_split_and_partition_properties(rows, rows_per_part):
    """Through the real pipeline: exact duplicates dropped, LOO = last two events per user by
    (ts, raw order), and the output does not depend on how the users are partitioned."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = _raw(tmp, [(f"u{u}", f"i{i}", NOW + t, "tv") for u, i, t in rows])
        one = load_dataset(_prepare(tmp, raw, name="one"))
        many = load_dataset(_prepare(tmp, raw, name="many", rows_per_part=rows_per_part))
    assert many.interactions.equals(one.interactions)

    deduped = list(dict.fromkeys(rows))  # exact duplicates: the first occurrence stays
    expected = {}
    for user in {u for u, _, _ in deduped}:
        events = sorted((t, pos, i) for pos, (u, i, t) in enumerate(deduped) if u == user)
        items = [f"i{i}" for _, _, i in events]
        expected[f"u{user}"] = (
            items[-1] if len(items) >= 2 else None,
            items[-2] if len(items) >= 3 else None,
        )
    frame = one.interactions.join(one.users, on=USER_IDX, maintain_order="left").join(
        one.items, on=ITEM_IDX, maintain_order="left"
    )
    got = {}
    for (user,), events in frame.group_by("user_id"):
        pick = {
            code: events.filter(pl.col(SPLIT_LOO) == code)["item_id"].to_list()
            for code in (TEST, VALID)
        }
        got[user] = (pick[TEST][0] if pick[TEST] else None, pick[VALID][0] if pick[VALID] else None)
        assert events[TS].is_sorted()
    assert got == expected
