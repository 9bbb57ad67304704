"""Generic CSV / Parquet sources: mapping, timestamps, side tables, bad input."""

from __future__ import annotations

import os

import polars as pl
import pytest

from recstack.datasets.sources.tabular import ColumnMapping, collect_or_explain, load_tabular
from recstack.errors import DataError
from recstack.schema import ITEM_ID, RATING, ROW, TS, USER_ID

CSV = "uid,iid,when,stars,device\n1,10,1700000000,4.5,mobile\n2,11,1700000100,3,web\n"
MAPPING = ColumnMapping(
    user="uid", item="iid", timestamp="when", rating="stars", context=["device"]
)


def one_line(exc):
    assert "\n" not in str(exc.value), str(exc.value)
    return str(exc.value)


def test_csv_roundtrip(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text(CSV)
    raw = load_tabular(f, MAPPING)
    assert isinstance(raw.interactions, pl.LazyFrame)
    df = raw.interactions.collect().drop(ROW)
    assert df.schema == pl.Schema(
        {
            USER_ID: pl.Int64,
            ITEM_ID: pl.Int64,
            TS: pl.Int64,
            RATING: pl.Float32,
            "device": pl.String,
        }
    )
    assert df.rows() == [(1, 10, 1700000000, 4.5, "mobile"), (2, 11, 1700000100, 3.0, "web")]
    assert raw.files == [f] and "log.csv" in raw.source


def test_string_ids_ms_and_min_rating(tmp_path):
    f = tmp_path / "log.tsv"
    f.write_text("u\ti\tt\tr\nalice\tA-1\t1700000000123\t5\nbob\tB-2\t1700000001999\t1\n")
    m = ColumnMapping(user="u", item="i", timestamp="t", rating="r", ts_unit="ms")
    df = load_tabular(f, m, min_rating=2).interactions.collect().drop(ROW)
    assert df.rows() == [("alice", "A-1", 1700000000, 5.0)]


@pytest.mark.parametrize(
    ("values", "fmt", "expected"),
    [
        (["2023-11-14T22:13:20Z", "2023-11-14T22:13:21Z"], None, [1700000000, 1700000001]),
        (["2023-11-14 22:13:20", "2023-11-14 22:13:21"], None, [1700000000, 1700000001]),
        (
            ["2023-11-15T00:13:20+02:00", "2023-11-14T22:13:21+00:00"],
            None,
            [1700000000, 1700000001],
        ),
        (
            ["14/11/2023 22:13:20", "14/11/2023 22:13:21"],
            "%d/%m/%Y %H:%M:%S",
            [1700000000, 1700000001],
        ),
    ],
    ids=["iso-z", "iso-naive-utc", "iso-offset", "format"],
)
def test_string_timestamps(tmp_path, values, fmt, expected):
    f = tmp_path / "log.csv"
    f.write_text("u,i,t\n" + "".join(f"1,2,{v}\n" for v in values))
    raw = load_tabular(f, ColumnMapping(user="u", item="i", timestamp="t", ts_format=fmt))
    assert raw.interactions.collect()[TS].to_list() == expected


def test_parquet_file_dir_glob_and_side_tables(tmp_path):
    d = tmp_path / "events"
    d.mkdir()
    ts = pl.Series([1_700_000_000_000_000, 1_700_000_001_000_000]).cast(pl.Datetime("us", "UTC"))
    for k in range(2):
        pl.DataFrame({"uid": [k, k + 1], "iid": ["a", "b"], "at": ts}).write_parquet(
            d / f"part-{k}.parquet"
        )
    pl.DataFrame({"iid": ["a", "b"], "title": ["A", "B"]}).write_parquet(tmp_path / "items.parquet")
    (tmp_path / "users.csv").write_text("user_id,age\n0,30\n1,40\n2,50\n")
    m = ColumnMapping(user="uid", item="iid", timestamp="at")
    for path in (d, str(d / "*.parquet")):
        raw = load_tabular(path, m, items=tmp_path / "items.parquet", users=tmp_path / "users.csv")
        df = raw.interactions.collect().drop(ROW)
        assert df.rows() == [
            (0, "a", 1700000000),
            (1, "b", 1700000001),
            (1, "a", 1700000000),
            (2, "b", 1700000001),
        ]
        assert raw.items.columns == [ITEM_ID, "title"]
        assert raw.users.schema[USER_ID] == pl.Int64 and raw.users.height == 3
        assert len(raw.files) == 4
    one = load_tabular(d / "part-0.parquet", m)
    assert one.interactions.collect().height == 2


def test_missing_column_lists_found(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text(CSV)
    bad = ColumnMapping(user="user", item="iid", timestamp="when")
    with pytest.raises(
        DataError, match=r"no column 'user' \(columns found: uid, iid, when, stars, device\)"
    ) as exc:
        load_tabular(f, bad)
    assert "log.csv" in one_line(exc)
    pl.read_csv(f).write_parquet(tmp_path / "log.parquet")
    with pytest.raises(DataError, match=r"log.parquet has no column 'user' \(columns found: uid"):
        load_tabular(tmp_path / "log.parquet", bad)


@pytest.mark.parametrize(
    ("text", "mapping", "match"),
    [
        ("u,i,t\n1,2,yesterday\n", ColumnMapping("u", "i", "t"), "ts_format"),
        ("u,i,t\n1.5,2,100\n", ColumnMapping("u", "i", "t"), "user column 'u' has type Float64"),
        ("u,i,t,r\n1,2,100,good\n", ColumnMapping("u", "i", "t", rating="r"), "rating column 'r'"),
        ("", ColumnMapping("u", "i", "t"), "is empty"),
        ("u,i,t\n", ColumnMapping("u", "i", "t"), "header but no rows"),
    ],
    ids=["non-numeric-ts", "float-user-id", "text-rating", "empty", "header-only"],
)
def test_bad_csv(tmp_path, text, mapping, match):
    f = tmp_path / "log.csv"
    f.write_text(text)
    with pytest.raises(DataError, match=match) as exc:
        load_tabular(f, mapping)
    assert "log.csv" in one_line(exc)


def test_binary_as_csv(tmp_path):
    f = tmp_path / "log.csv"
    f.write_bytes(os.urandom(4096))
    with pytest.raises(DataError, match=r"binary|not UTF-8") as exc:
        load_tabular(f, MAPPING)
    assert "log.csv" in one_line(exc)


def test_truncated_and_fake_parquet(tmp_path):
    good = tmp_path / "good.parquet"
    pl.DataFrame({"u": [1] * 100, "i": [2] * 100, "t": [3] * 100}).write_parquet(good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-20])
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(os.urandom(2048))
    for f in (cut, fake):
        with pytest.raises(DataError, match="not a readable Parquet file") as exc:
            load_tabular(f, ColumnMapping("u", "i", "t"))
        assert f.name in one_line(exc)


def test_empty_parquet_and_mixed_types(tmp_path):
    f = tmp_path / "empty.parquet"
    pl.DataFrame(schema={"u": pl.Int64, "i": pl.Int64, "t": pl.Int64}).write_parquet(f)
    with pytest.raises(DataError, match="holds no rows"):
        load_tabular(f, ColumnMapping("u", "i", "t"))
    d = tmp_path / "mixed"
    d.mkdir()
    pl.DataFrame({"u": [1], "i": [2], "t": [3]}).write_parquet(d / "a.parquet")
    pl.DataFrame({"u": ["x"], "i": [2], "t": [3]}).write_parquet(d / "b.parquet")
    with pytest.raises(DataError, match=r"b.parquet: column 'u' is String but Int64"):
        load_tabular(d, ColumnMapping("u", "i", "t"))


def test_side_table_key_errors(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text(CSV)
    (tmp_path / "items.csv").write_text("movie,title\n10,A\n")
    with pytest.raises(
        DataError, match=r"items.csv has no column 'iid' \(columns found: movie, title\)"
    ):
        load_tabular(f, MAPPING, items=tmp_path / "items.csv")
    (tmp_path / "items2.csv").write_text("iid,title\nx10,A\n")
    with pytest.raises(DataError, match=r"key column 'iid' .* does not match"):
        load_tabular(f, MAPPING, items=tmp_path / "items2.csv")


def test_late_bad_row_is_explained_at_collect(tmp_path):
    f = tmp_path / "log.csv"
    rows = "".join(f"{k},{k},{1700000000 + k}\n" for k in range(3000))
    f.write_text("u,i,t\n" + rows + "9,9,not-a-time\n")
    raw = load_tabular(f, ColumnMapping("u", "i", "t"))  # the first rows are fine
    with pytest.raises(DataError, match=r"cannot read .*log\.csv") as exc:
        collect_or_explain(raw.interactions, raw.files)
    one_line(exc)


def test_bad_mapping_and_paths(tmp_path):
    with pytest.raises(DataError, match="ts_unit"):
        ColumnMapping("u", "i", "t", ts_unit="minutes")
    with pytest.raises(DataError, match="does not exist"):
        load_tabular(tmp_path / "nope.csv", MAPPING)
    with pytest.raises(DataError, match="no files match"):
        load_tabular(str(tmp_path / "*.parquet"), MAPPING)
    with pytest.raises(DataError, match="needs a rating column"):
        (tmp_path / "l.csv").write_text(CSV)
        load_tabular(tmp_path / "l.csv", ColumnMapping("uid", "iid", "when"), min_rating=3)


def test_row_order_comes_from_the_scan_across_files(tmp_path):
    """The raw row index is added by the scan itself, so prepare's range filters push down."""
    for i in range(2):
        pl.DataFrame({"u": [i, i], "i": [1, 2], "t": [5, 3]}).write_parquet(
            tmp_path / f"p{i}.parquet"
        )
    raw = load_tabular(tmp_path, ColumnMapping(user="u", item="i", timestamp="t"))
    assert raw.interactions.collect()[ROW].to_list() == [0, 1, 2, 3]
    plan = raw.interactions.filter(pl.col(USER_ID) == 1).explain()
    assert "SELECTION" in plan  # the user filter runs inside the Parquet scan
