"""RecBole atomic files (.inter/.item/.user) on tiny hand-written data."""

from __future__ import annotations

import polars as pl
import pytest

from recstack.datasets.sources.atomic import atomic_paths, load_atomic
from recstack.errors import DataError
from recstack.schema import ITEM_ID, RATING, TS, USER_ID

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\ttags:token_seq\n"
    "u1\ti1\t4\t881250949.7\ta b\n"
    "u2\ti2\t2.5\t881250950\t\n"
)
ITEM = "item_id:token\tmovie_title:token_seq\tscores:float_seq\ni1\tToy Story\t1.5 2\ni2\tHeat\t\n"
USER = "user_id:token\tage:token\nu1\t24\nu2\t53\n"


def write(tmp_path, name="toy", inter=INTER, item=ITEM, user=USER):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    for suffix, text in ((".inter", inter), (".item", item), (".user", user)):
        if text is not None:
            (d / f"{name}{suffix}").write_text(text)
    return d


def one_line(exc):
    assert "\n" not in str(exc.value), str(exc.value)
    return str(exc.value)


def test_load_dir(tmp_path):
    d = write(tmp_path)
    raw = load_atomic(d)
    assert isinstance(raw.interactions, pl.LazyFrame)
    inter = raw.interactions.collect()
    assert inter.schema == pl.Schema(
        {
            USER_ID: pl.String,
            ITEM_ID: pl.String,
            RATING: pl.Float32,
            TS: pl.Int64,
            "tags": pl.List(pl.String),
        }
    )
    assert inter.rows() == [
        ("u1", "i1", 4.0, 881250949, ["a", "b"]),
        ("u2", "i2", 2.5, 881250950, []),
    ]
    assert raw.items.rows() == [("i1", ["Toy", "Story"], [1.5, 2.0]), ("i2", ["Heat"], [])]
    assert raw.users.columns == [USER_ID, "age"]
    assert raw.files == [d / "toy.inter", d / "toy.item", d / "toy.user"]
    assert "toy.inter" in raw.source


def test_prefix_and_inter_file_and_name(tmp_path):
    d = write(tmp_path, item=None, user=None)
    for arg in (d / "toy", d / "toy.inter"):
        raw = load_atomic(arg)
        assert raw.items is None and raw.users is None
        assert raw.interactions.collect().height == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "toy.inter").write_text(INTER)
    assert load_atomic(other, name="toy").interactions.collect().height == 2
    with pytest.raises(DataError, match=r"found: toy.inter; pass name=") as exc:
        load_atomic(other)
    one_line(exc)


def test_column_mapping(tmp_path):
    inter = "session_id:token\titem_id:token\tts:float\nS\tI\t10\n"
    d = write(tmp_path, inter=inter, item=None, user=None)
    raw = load_atomic(d, columns={"session_id": USER_ID, "ts": TS})
    assert raw.interactions.collect().rows() == [("S", "I", 10)]


def test_missing_field_lists_found(tmp_path):
    d = write(tmp_path, inter="user_id:token\titem_id:token\nu\ti\n", item=None, user=None)
    with pytest.raises(
        DataError, match=r"no field for 'ts' \(fields found: user_id:token, item_id:token\)"
    ) as exc:
        load_atomic(d)
    assert "toy.inter" in one_line(exc)


@pytest.mark.parametrize(
    ("inter", "match"),
    [
        ("user_id\titem_id\ttimestamp\nu\ti\t1\n", "is not 'field:type'"),
        ("user_id:token\titem_id:int\ttimestamp:float\nu\ti\t1\n", "RecBole atomic types are"),
        ("user_id:token\titem_id:token\ttimestamp:float\nu\ti\tyesterday\n", "cannot parse"),
        ("user_id:token\titem_id:token\ttimestamp:float\n", "header but no rows"),
        ("", "is empty"),
        ("\x00\x01\x02binary\x00", "binary"),
    ],
    ids=["no-types", "bad-type", "non-numeric-ts", "header-only", "empty", "binary"],
)
def test_bad_inter(tmp_path, inter, match):
    d = write(tmp_path, inter=inter, item=None, user=None)
    with pytest.raises(DataError, match=match) as exc:
        load_atomic(d)
    assert "toy.inter" in one_line(exc)


def test_bad_item_file(tmp_path):
    d = write(tmp_path, item="title:token\nx\n")
    with pytest.raises(DataError, match=r"toy.item has no field for 'item_id'"):
        load_atomic(d)


def test_no_files(tmp_path):
    with pytest.raises(DataError, match="no RecBole interaction file"):
        atomic_paths(tmp_path / "nothing")
