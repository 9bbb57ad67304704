"""MovieLens parsers on tiny hand-written zips, the download/fallback routing, and one
real-data test of the offline ML-100K route (RecBole wheel from PyPI)."""

from __future__ import annotations

import hashlib
import zipfile

import polars as pl
import pytest

from recstack.datasets.download import UnreachableError
from recstack.datasets.sources import movielens as ml
from recstack.datasets.sources import movielens_schema as mls
from recstack.errors import DataError, DownloadError
from recstack.schema import (
    AGE,
    GENDER,
    GENRES,
    ITEM_ID,
    OCCUPATION,
    RATING,
    TITLE,
    USER_ID,
    YEAR,
    ZIP,
)

# real u.item lines (GroupLens ml-100k) for the awkward cases, plus an accented latin-1 one
U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)"
    "|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "543|Misérables, Les (1995)|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|1|0|0|0|1|0|0|0|0|0|0\n"
    "1412|Land Before Time III: The Time of the Great Giving (1995) (V)|01-Jan-1995||"
    "http://x|0|0|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "1420|Gilligan's Island: The Movie (1998)|01-Jan-1997||http://x"
    "|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)
U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
U_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n"

# (item_id, title, genres, year) the parser must give for U_ITEM
U_ITEM_EXPECTED = [
    (1, "Toy Story", ["Animation", "Children's", "Comedy"], 1995),
    (267, "unknown", ["unknown"], None),
    (543, "Misérables, Les", ["Drama", "Musical"], 1995),
    (
        1412,
        "Land Before Time III: The Time of the Great Giving (V)",
        ["Animation", "Children's"],
        1995,
    ),
    (1420, "Gilligan's Island: The Movie", ["Comedy"], 1998),
]


def make_zip(path, members: dict[str, bytes | str], encoding="latin-1"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data.encode(encoding) if isinstance(data, str) else data)
    return path


def ml100k_zip(path, data=U_DATA, item=U_ITEM, user=U_USER):
    return make_zip(path, {"ml-100k/u.data": data, "ml-100k/u.item": item, "ml-100k/u.user": user})


def ml1m_zip(path):
    return make_zip(
        path,
        {
            "ml-1m/ratings.dat": "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
            "ml-1m/movies.dat": "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
            "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
            "3::Café Society (1995)::Comedy|Romance\n",
            "ml-1m/users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
        },
    )


def ml20m_zip(
    path, ratings="userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,2.5,1112484676\n"
):
    return make_zip(
        path,
        {
            "ml-20m/ratings.csv": ratings,
            "ml-20m/movies.csv": "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
            '11,"American President, The (1995)",Comedy|Drama|Romance\n'
            "131260,Rentun Ruusu (2001),(no genres listed)\n"
            "100,Babylon 5,Sci-Fi\n",
        },
        encoding="utf-8",
    )


def test_ml100k_zip(tmp_path):
    raw = ml.read_movielens_zip(ml100k_zip(tmp_path / "ml-100k.zip"), "ml-100k")
    inter = raw.interactions.collect()
    assert inter.schema == mls.INTERACTION_SCHEMA
    assert inter.rows() == [
        (196, 242, 881250949, 3.0),
        (186, 302, 891717742, 3.0),
        (22, 377, 878887116, 1.0),
    ]
    assert raw.items.schema == mls.ITEM_SCHEMA
    assert raw.items.rows() == U_ITEM_EXPECTED
    assert raw.users.schema == mls.USER_SCHEMA
    assert raw.users.row(0, named=True) == {
        USER_ID: 1,
        GENDER: "M",
        AGE: 24,
        OCCUPATION: "technician",
        ZIP: "85711",
    }
    assert raw.files == [tmp_path / "ml-100k.zip"]


def test_ml1m_zip(tmp_path):
    raw = ml.read_movielens_zip(ml1m_zip(tmp_path / "ml-1m.zip"), "ml-1m")
    inter = raw.interactions.collect()
    assert inter.schema == mls.INTERACTION_SCHEMA and inter.height == 3
    assert inter.row(0) == (1, 1193, 978300760, 5.0)
    items = {r[ITEM_ID]: r for r in raw.items.iter_rows(named=True)}
    assert raw.items.schema == mls.ITEM_SCHEMA
    assert items[661][GENRES] == ["Animation", "Children's", "Musical"]
    assert items[3][TITLE] == "Café Society" and items[3][YEAR] == 1995
    assert raw.users.schema == mls.USER_SCHEMA
    assert raw.users.rows() == [
        (1, "F", 1, "K-12 student", "48067"),
        (2, "M", 56, "self-employed", "70072"),
    ]


def test_ml20m_zip_extracts_and_scans_lazily(tmp_path):
    path = ml20m_zip(tmp_path / "ml-20m.zip")
    raw = ml.read_movielens_zip(path, "ml-20m")
    assert isinstance(raw.interactions, pl.LazyFrame)
    assert raw.interactions.collect().rows() == [(1, 2, 1112486027, 3.5), (1, 29, 1112484676, 2.5)]
    assert (tmp_path / "ml-20m" / "ratings.csv").is_file()
    assert raw.users is None
    assert raw.items.schema == mls.ITEM_SCHEMA
    assert raw.items.rows() == [
        (1, "Toy Story", ["Adventure", "Animation"], 1995),
        (11, "American President, The", ["Comedy", "Drama", "Romance"], 1995),
        (131260, "Rentun Ruusu", [], 2001),
        (100, "Babylon 5", ["Sci-Fi"], None),
    ]
    # a second open reuses the extracted file
    again = ml.read_movielens_zip(path, "ml-20m")
    assert again.interactions.collect().height == 2


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x01garbage" * 50, b"PK\x03\x04truncated"],
    ids=["empty", "random-bytes", "truncated"],
)
def test_bad_zip(tmp_path, data):
    path = tmp_path / "ml-100k.zip"
    path.write_bytes(data)
    with pytest.raises(DataError, match="not a readable zip") as exc:
        ml.read_movielens_zip(path, "ml-100k")
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_truncated_real_zip(tmp_path):
    full = ml100k_zip(tmp_path / "full.zip").read_bytes()
    cut = tmp_path / "ml-100k.zip"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="not a readable zip"):
        ml.read_movielens_zip(cut, "ml-100k")


def test_zip_missing_member_lists_members(tmp_path):
    path = make_zip(tmp_path / "ml-1m.zip", {"ml-1m/ratings.dat": "1::2::3::4\n"})
    with pytest.raises(DataError, match=r"has no movies.dat \(members: ratings.dat\)"):
        ml.read_movielens_zip(path, "ml-1m")


def test_bad_rows_name_the_member(tmp_path):
    path = ml100k_zip(tmp_path / "ml-100k.zip", data="196\t242\t3\tyesterday\n")
    with pytest.raises(DataError, match=r"ml-100k.zip!u.data") as exc:
        ml.read_movielens_zip(path, "ml-100k")
    assert "\n" not in str(exc.value)
    path = ml100k_zip(tmp_path / "ml-100k.zip", data="")
    with pytest.raises(DataError, match=r"u\.data is empty"):
        ml.read_movielens_zip(path, "ml-100k")


def test_ml20m_wrong_header(tmp_path):
    path = ml20m_zip(tmp_path / "ml-20m.zip", ratings="user,item,rating,timestamp\n1,2,3,4\n")
    with pytest.raises(
        DataError, match="has columns user, item, rating, timestamp, expected userId"
    ):
        ml.read_movielens_zip(path, "ml-20m")


def test_unknown_release():
    with pytest.raises(DataError, match="ml-100k, ml-1m, ml-20m, ml-25m"):
        ml.load_movielens("ml-10m")


def test_load_movielens_uses_cached_zip_and_min_rating(tmp_path, monkeypatch):
    path = ml100k_zip(tmp_path / "ml-100k.zip")
    monkeypatch.setitem(ml.MOVIELENS_MD5, "ml-100k", hashlib.md5(path.read_bytes()).hexdigest())

    def no_network(*args, **kwargs):
        raise AssertionError("the cached zip must be used")

    monkeypatch.setattr(ml.download.__globals__["urllib"].request, "urlopen", no_network)
    raw = ml.load_movielens("ml-100k", cache=tmp_path, min_rating=3)
    assert raw.source == f"grouplens ml-100k.zip ({ml.grouplens_url('ml-100k')})"
    assert isinstance(raw.interactions, pl.LazyFrame)
    assert raw.interactions.collect()[RATING].to_list() == [3.0, 3.0]
    assert ml.load_movielens("ml-100k", cache=tmp_path).interactions.collect().height == 3


def _unreachable(*args, **kwargs):
    raise UnreachableError(
        "cannot download x: DNS lookup failed for example; fix it", "DNS lookup failed"
    )


def test_unreachable_without_fallback_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(ml, "download", _unreachable)
    with pytest.raises(DownloadError, match="DNS lookup failed"):
        ml.load_movielens("ml-1m", cache=tmp_path)
    with pytest.raises(DownloadError, match="DNS lookup failed"):
        ml.load_movielens("ml-100k", cache=tmp_path, offline_fallback=False)


def test_unreachable_ml100k_goes_to_recbole(tmp_path, monkeypatch):
    from recstack.datasets.sources import recbole_wheel

    seen = {}

    def fake(cache, unreachable_reason):
        seen.update(cache=cache, reason=unreachable_reason)
        return ml.read_movielens_zip(ml100k_zip(tmp_path / "z.zip"), "ml-100k", source="fake")

    monkeypatch.setattr(ml, "download", _unreachable)
    monkeypatch.setattr(recbole_wheel, "load_recbole_ml100k", fake)
    raw = ml.load_movielens("ml-100k", cache=tmp_path, min_rating=2)
    assert seen == {"cache": tmp_path, "reason": "DNS lookup failed"}
    assert raw.interactions.collect().height == 2


def test_title_and_year():
    df = pl.DataFrame(
        {"t": ["Seven (Se7en) (1995)", "Big Bang Theory, The (2007-)", "Plain", " Pad (1990) "]}
    )
    title, year = mls.title_and_year(pl.col("t"))
    out = df.select(title, year)
    assert out.rows() == [
        ("Seven (Se7en)", 1995),
        ("Big Bang Theory, The", 2007),
        ("Plain", None),
        ("Pad", 1990),
    ]


# --------------------------------------------------------------------------- real data


def _grouplens_zip_from(raw, path):
    """Write a GroupLens-format ml-100k.zip from a RawLog (the inverse of the parser)."""
    inter = raw.interactions.collect()
    data = "".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, t, r in inter.iter_rows())
    lines = []
    for item_id, title, genres, year in raw.items.iter_rows():
        if year is None:
            raw_title, date = title, ""
        elif title.endswith(" (V)"):
            raw_title, date = f"{title[:-4]} ({year}) (V)", f"01-Jan-{year}"
        else:
            raw_title, date = f"{title} ({year})", f"01-Jan-{year}"
        flags = "|".join("1" if g in genres else "0" for g in ml.ML100K_GENRES)
        lines.append(f"{item_id}|{raw_title}|{date}||http://x|{flags}\n")
    users = "".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, g, a, o, z in raw.users.iter_rows())
    return ml100k_zip(path, data=data, item="".join(lines), user=users)


@pytest.mark.network
def test_real_ml100k_offline_route(tmp_path):
    from recstack.datasets.sources.resolve import open_source

    raw = open_source("ml-100k")  # grouplens is unreachable here: the RecBole wheel route
    inter = raw.interactions.collect()
    assert inter.height == 100_000
    assert inter[USER_ID].n_unique() == 943 and inter[ITEM_ID].n_unique() == 1682
    assert raw.items.height == 1682 and raw.users.height == 943
    if raw.source.startswith("recbole"):
        assert "offline fallback; grouplens unreachable:" in raw.source
    else:
        assert raw.source.startswith("grouplens ml-100k.zip (https://")
    assert inter.schema == mls.INTERACTION_SCHEMA
    assert raw.items.schema == mls.ITEM_SCHEMA and raw.users.schema == mls.USER_SCHEMA
    assert inter.row(0) == (196, 242, 881250949, 3.0)  # u.data's first line
    # the real GroupLens lines for the awkward items parse to the same rows as the wheel
    tiny = ml.read_movielens_zip(ml100k_zip(tmp_path / "tiny.zip"), "ml-100k").items
    same = raw.items.filter(pl.col(ITEM_ID).is_in(tiny[ITEM_ID].implode()))
    assert same.rows() == tiny.rows()
    # and a GroupLens-format zip of the whole data set parses back to an identical RawLog
    back = ml.read_movielens_zip(_grouplens_zip_from(raw, tmp_path / "ml-100k.zip"), "ml-100k")
    assert back.interactions.collect().equals(inter)
    assert back.items.equals(raw.items)
    assert back.users.equals(raw.users)


def test_recbole_wheel_pip_failure_is_one_line(tmp_path, monkeypatch):
    import subprocess

    from recstack.datasets.sources import recbole_wheel as rw

    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / rw.RECBOLE_WHEEL).write_bytes(b"stale")  # wrong sha256: refetched

    def pip_fails(*args, **kwargs):
        return subprocess.CompletedProcess(
            args, 1, "", "WARNING: x\nERROR: No matching distribution\n"
        )

    monkeypatch.setattr(rw.subprocess, "run", pip_fails)
    with pytest.raises(
        DownloadError, match=r"pip download recbole==1\.2\.1 failed \(ERROR: No matching"
    ) as exc:
        rw.fetch_recbole_wheel(tmp_path)
    assert "\n" not in str(exc.value) and rw.RECBOLE_WHEEL_SHA256 in str(exc.value)
    assert not (tmp_path / "wheels" / rw.RECBOLE_WHEEL).exists()


def test_recbole_wheel_bad_files(tmp_path):
    from recstack.datasets.sources import recbole_wheel as rw

    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable wheel"):
        rw.read_recbole_ml100k(junk)
    empty = make_zip(tmp_path / "empty.whl", {"recbole/__init__.py": ""})
    with pytest.raises(DataError, match=r"has no recbole/dataset_example/ml-100k/ml-100k\.inter"):
        rw.read_recbole_ml100k(empty)
