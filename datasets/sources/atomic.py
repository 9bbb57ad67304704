"""RecBole atomic files: `<name>.inter`, `<name>.item`, `<name>.user`.

Each file is tab-separated with a header of `field:type` cells, type one of `token`
(a string), `token_seq` (space-separated strings -> list[str]), `float` and `float_seq`
(space-separated numbers -> list[f64]). Fields are renamed with a mapping from RecBole
field names to ours (defaults: user_id, item_id, timestamp -> ts, rating); other fields
keep their RecBole name. Tokens stay strings (ids included); the timestamp becomes Int64
seconds and the rating Float32. The `.inter` file is scanned lazily.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recstack.datasets.sources import RawLog
from recstack.datasets.sources.tabular import (
    SAMPLE_ROWS,
    check_text_file,
    check_text_head,
)
from recstack.errors import DataError, first_line
from recstack.schema import ITEM_ID, RATING, TS, USER_ID

ATOMIC_TYPES = {
    "token": pl.String,
    "token_seq": pl.String,
    "float": pl.Float64,
    "float_seq": pl.String,
}
DEFAULT_FIELDS: dict[str, str] = {
    "user_id": USER_ID,
    "item_id": ITEM_ID,
    "timestamp": TS,
    "rating": RATING,
}
_ERRORS = (pl.exceptions.PolarsError, OSError, ValueError)


@dataclass(frozen=True)
class AtomicField:
    header: str  # the raw header cell, e.g. "rating:float"
    name: str  # RecBole field name, e.g. "rating"
    kind: str  # one of ATOMIC_TYPES
    ours: str  # our column name after renaming


def parse_header(line: str, where: str, fields: Mapping[str, str]) -> list[AtomicField]:
    """`user_id:token\\titem_id:token...` -> typed, renamed fields."""
    out = []
    for cell in line.rstrip("\r\n").split("\t"):
        name, sep, kind = cell.strip().rpartition(":")
        if not sep or not name:
            raise DataError(
                f"{where}: header cell {cell!r} is not 'field:type'; a RecBole atomic file "
                f"starts with a header like 'user_id:token\\titem_id:token'"
            )
        if kind not in ATOMIC_TYPES:
            raise DataError(
                f"{where}: field {name!r} has type {kind!r}; RecBole atomic types are "
                f"{', '.join(ATOMIC_TYPES)}"
            )
        out.append(AtomicField(cell, name, kind, fields.get(name, name)))
    ours = [f.ours for f in out]
    dupes = sorted({c for c in ours if ours.count(c) > 1})
    if dupes:
        raise DataError(f"{where}: column {dupes[0]!r} appears twice after renaming; fix the map")
    return out


def _convert(field: AtomicField, as_text: Collection[str] = ()) -> pl.Expr:
    col = pl.col(field.header)
    if field.name in as_text:
        return col.alias(field.ours)
    if field.ours == TS:
        return col.cast(pl.Float64).floor().cast(pl.Int64).alias(TS)
    if field.ours == RATING:
        return col.cast(pl.Float64).cast(pl.Float32).alias(RATING)
    if field.kind in ("token_seq", "float_seq"):
        parts = col.fill_null("").str.strip_chars().str.split(" ")
        parts = parts.list.eval(pl.element().filter(pl.element() != ""))
        if field.kind == "float_seq":
            parts = parts.cast(pl.List(pl.Float64))
        return parts.alias(field.ours)
    return col.alias(field.ours)


def _head_line(head: bytes, where: str) -> str:
    check_text_head(head, where)
    return head.decode("utf-8", errors="replace").splitlines()[0]


def scan_atomic(
    source: Path | bytes,
    where: str,
    fields: Mapping[str, str],
    required: tuple[str, ...],
    as_text: Collection[str] = (),
) -> pl.LazyFrame:
    """Typed, renamed frame of one atomic file (lazy scan for a path, in memory for bytes).

    Fields named in `as_text` are kept as the raw string (no `*_seq` split). The first rows
    are parsed eagerly so that a bad header or type fails here, as a one-line `DataError`
    naming the file.
    """
    if isinstance(source, Path):
        check_text_file(source)
        with open(source, "rb") as fh:
            head = fh.read(65536)
    else:
        head = source[:65536]
    parsed = parse_header(_head_line(head, where), where, fields)
    found = [f.ours for f in parsed]
    missing = [c for c in required if c not in found]
    if missing:
        raise DataError(
            f"{where} has no field for {', '.join(repr(m) for m in missing)} "
            f"(fields found: {', '.join(f.header for f in parsed)}); "
            "map the RecBole field names with columns={recbole_field: ours}"
        )
    schema = {f.header: ATOMIC_TYPES[f.kind] for f in parsed}
    options = dict(separator="\t", has_header=True, schema=schema, quote_char=None)
    exprs = [_convert(f, as_text) for f in parsed]

    def read(n_rows: int | None):
        data = source if isinstance(source, Path) else io.BytesIO(source)
        return pl.read_csv(data, n_rows=n_rows, **options)

    try:
        sample = read(SAMPLE_ROWS).select(exprs)
    except _ERRORS as exc:
        raise DataError(f"cannot parse {where}: {first_line(exc)}; fix the file") from None
    if sample.height == 0:
        raise DataError(f"{where} has a header but no rows; it holds no data")
    if isinstance(source, Path):
        return pl.scan_csv(source, **options).select(exprs)
    try:
        return read(None).select(exprs).lazy()
    except _ERRORS as exc:
        raise DataError(f"cannot parse {where}: {first_line(exc)}; fix the file") from None


def read_atomic_side(
    source: Path | bytes,
    where: str,
    fields: Mapping[str, str],
    key: str,
    as_text: Collection[str] = (),
) -> pl.DataFrame:
    """An eager `.item` / `.user` table keyed by `key`."""
    lazy = scan_atomic(source, where, fields, (key,), as_text)
    try:
        return lazy.collect()
    except _ERRORS as exc:
        raise DataError(f"cannot parse {where}: {first_line(exc)}; fix the file") from None


def atomic_paths(path_prefix_or_dir: Path | str, name: str | None = None) -> dict[str, Path]:
    """`{".inter": path, ".item": path?, ".user": path?}` for a dir, a prefix or an .inter file."""
    p = Path(path_prefix_or_dir)
    if p.is_dir():
        prefix = p / (name or p.name)
    elif p.suffix in (".inter", ".item", ".user"):
        prefix = p.with_suffix("")
    else:
        prefix = p
    inter = prefix.with_name(prefix.name + ".inter")
    if not inter.is_file():
        here = inter.parent
        listing = sorted(f.name for f in here.glob("*.inter")) if here.is_dir() else []
        raise DataError(
            f"no RecBole interaction file {inter}"
            + (f" (found: {', '.join(listing)}; pass name=...)" if listing else "")
            + "; pass a directory holding <name>.inter or the path prefix <dir>/<name>"
        )
    out = {".inter": inter}
    for suffix in (".item", ".user"):
        f = prefix.with_name(prefix.name + suffix)
        if f.is_file():
            out[suffix] = f
    return out


def load_atomic(
    path_prefix_or_dir: Path | str,
    name: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> RawLog:
    """Open RecBole atomic files as a RawLog (ids as strings, ts Int64 s, rating Float32).

    `columns` maps RecBole field names to ours and extends `DEFAULT_FIELDS`, e.g.
    `{"session_id": "user_id"}` to treat sessions as users.
    """
    fields = {**DEFAULT_FIELDS, **(columns or {})}
    paths = atomic_paths(path_prefix_or_dir, name)
    inter = scan_atomic(paths[".inter"], str(paths[".inter"]), fields, (USER_ID, ITEM_ID, TS))
    items = users = None
    if ".item" in paths:
        items = read_atomic_side(paths[".item"], str(paths[".item"]), fields, ITEM_ID)
    if ".user" in paths:
        users = read_atomic_side(paths[".user"], str(paths[".user"]), fields, USER_ID)
    return RawLog(
        interactions=inter,
        items=items,
        users=users,
        source=f"recbole atomic files {', '.join(str(f) for f in paths.values())}",
        files=list(paths.values()),
    )
