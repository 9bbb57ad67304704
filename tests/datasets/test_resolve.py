"""open_source: every spec form, on small files written here."""

from __future__ import annotations

import polars as pl
import pytest

from recstack.datasets.download import UnreachableError
from recstack.datasets.sources import movielens
from recstack.datasets.sources.resolve import SPEC_FORMS, open_source
from recstack.datasets.sources.tabular import ColumnMapping
from recstack.errors import DataError, DownloadError
from recstack.schema import ITEM_ID, ITEMS_FILE, RATING, ROW, TS, USER_ID, USERS_FILE


@pytest.fixture
def synth_dir(tmp_path):
    """The synthetic generator's layout: events/*.parquet, items.parquet, users.parquet."""
    root = tmp_path / "synth"
    (root / "events").mkdir(parents=True)
    for k in range(3):
        pl.DataFrame(
            {
                USER_ID: pl.Series([k, k], dtype=pl.Int64),
                ITEM_ID: pl.Series([1, 2 + k], dtype=pl.Int64),
                TS: pl.Series([100 * k, 100 * k + 1], dtype=pl.Int64),
                "device": ["mobile", "web"],
            }
        ).write_parquet(root / "events" / f"part-{k:03d}.parquet")
    pl.DataFrame(
        {ITEM_ID: pl.Series([1, 2, 3, 4], dtype=pl.Int64), "category": list("abcd")}
    ).write_parquet(root / ITEMS_FILE)
    pl.DataFrame(
        {USER_ID: pl.Series([0, 1, 2], dtype=pl.Int64), "country": ["de", "fr", "us"]}
    ).write_parquet(root / USERS_FILE)
    return root


def test_synth(synth_dir):
    raw = open_source(f"synth:{synth_dir}")
    df = raw.interactions.collect().drop(ROW)
    assert df.schema == pl.Schema(
        {USER_ID: pl.Int64, ITEM_ID: pl.Int64, TS: pl.Int64, "device": pl.String}
    )
    assert df.height == 6 and df.row(0) == (0, 1, 0, "mobile")
    assert raw.items.columns == [ITEM_ID, "category"] and raw.users.height == 3
    assert raw.source.startswith("synthetic log")
    assert len(raw.files) == 5


def test_synth_without_events(tmp_path):
    with pytest.raises(DataError, match="has no events/ folder"):
        open_source(f"synth:{tmp_path}")


def test_csv_and_parquet_specs(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("u,i,t,r\n1,2,3,4\n1,3,4,1\n")
    m = ColumnMapping("u", "i", "t", rating="r")
    assert open_source(f"csv:{f}", columns=m, min_rating=2).interactions.collect().height == 1
    pl.read_csv(f).write_parquet(tmp_path / "log.parquet")
    assert (
        open_source(f"parquet:{tmp_path / 'log.parquet'}", columns=m).interactions.collect().height
        == 2
    )
    with pytest.raises(DataError, match="files are csv, not parquet"):
        open_source(f"parquet:{f}", columns=m)
    with pytest.raises(DataError, match="needs a column mapping"):
        open_source(f"csv:{f}")


def test_recbole_spec(tmp_path):
    d = tmp_path / "toy"
    d.mkdir()
    (d / "toy.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\na\tb\t5\t1\na\tc\t1\t2\n"
    )
    raw = open_source(f"recbole:{d}", min_rating=3)
    assert raw.interactions.collect().rows() == [("a", "b", 5.0, 1)]
    mapped = open_source(
        f"recbole:{d}", columns=ColumnMapping("user_id", "item_id", "timestamp", rating="rating")
    )
    assert mapped.interactions.collect().columns == [USER_ID, ITEM_ID, RATING, TS]


@pytest.mark.parametrize("spec", ["ml-10m", "foo:bar", "csv:", "movielens", ""])
def test_unknown_spec_lists_forms(spec):
    with pytest.raises(DataError) as exc:
        open_source(spec)
    assert SPEC_FORMS in str(exc.value) and "\n" not in str(exc.value)


def test_movielens_spec_routes_and_refuses_mapping(tmp_path, monkeypatch):
    def unreachable(*args, **kwargs):
        raise UnreachableError("cannot download x: DNS lookup failed; fix", "DNS lookup failed")

    monkeypatch.setattr(movielens, "download", unreachable)
    with pytest.raises(DownloadError, match="DNS lookup failed"):
        open_source("ml-1m", cache=tmp_path)
    with pytest.raises(DataError, match="fixed layout"):
        open_source("ml-1m", columns=ColumnMapping("u", "i", "t"))
