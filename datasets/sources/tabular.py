"""Generic CSV / Parquet interaction logs with a column mapping.

`load_tabular(path, ColumnMapping(user=..., item=..., timestamp=...))` accepts a file, a
directory of Parquet (or CSV) files, or a glob, and returns a `RawLog` whose `interactions`
is a lazy scan: nothing is read twice. What can be checked cheaply is checked at open time
(file headers / Parquet footers, column names and types, the first rows parsed with the
final dtypes); anything that only fails deeper in the file surfaces when the prepare step
collects through `collect_or_explain`, as a one-line `DataError`.
"""

from __future__ import annotations

import glob as globlib
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recstack.datasets.sources import RawLog
from recstack.errors import DataError, first_line
from recstack.schema import ITEM_ID, RATING, ROW, TS, USER_ID

TsUnit = Literal["s", "ms", "us", "ns"]
_UNIT_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
SAMPLE_ROWS = 1000  # rows parsed eagerly at open time to catch type errors early
_ERROR_TYPES = (pl.exceptions.PolarsError, pa.ArrowException, OSError, ValueError)


@dataclass
class ColumnMapping:
    """Which columns of a raw table hold what (names as they are in the file).

    `ts_unit` says what a numeric timestamp counts (seconds, ms, us, ns since the epoch);
    `ts_format` is a strftime format for string timestamps (None: ISO 8601, naive = UTC).
    `item_key` / `user_key` name the key column in the optional items / users files
    (default: the same name as `item` / `user`, else `item_id` / `user_id`).
    """

    user: str
    item: str
    timestamp: str
    rating: str | None = None
    context: list[str] = field(default_factory=list)
    ts_unit: TsUnit = "s"
    ts_format: str | None = None
    item_key: str | None = None
    user_key: str | None = None

    def __post_init__(self) -> None:
        if self.ts_unit not in _UNIT_DIVISOR:
            raise DataError(
                f"ts_unit {self.ts_unit!r} is not one of {sorted(_UNIT_DIVISOR)}; "
                "say what the numeric timestamp counts"
            )

    def renames(self) -> dict[str, str]:
        """Raw column name -> our column name, for the columns we keep."""
        out = {self.user: USER_ID, self.item: ITEM_ID, self.timestamp: TS}
        if self.rating:
            out[self.rating] = RATING
        for name in self.context:
            out.setdefault(name, name)
        return out


# --------------------------------------------------------------------------- errors


def _names(files: Sequence[Path] | Path | str) -> str:
    if isinstance(files, Path | str):
        return str(files)
    files = list(files)
    if len(files) <= 3:
        return ", ".join(str(f) for f in files)
    return f"{files[0]} (and {len(files) - 1} more files)"


@contextmanager
def explain_read_errors(files: Sequence[Path] | Path | str) -> Iterator[None]:
    """Turn polars/pyarrow/IO failures while reading `files` into a one-line `DataError`."""
    try:
        yield
    except _ERROR_TYPES as exc:
        raise DataError(
            f"cannot read {_names(files)}: {first_line(exc)}; fix or re-export the file "
            "(check the column types and that the file is complete)"
        ) from None


def collect_or_explain(lazy: pl.LazyFrame, files: Sequence[Path] | Path | str) -> pl.DataFrame:
    """`lazy.collect()`, with read failures turned into a one-line `DataError`."""
    with explain_read_errors(files):
        return lazy.collect()


# --------------------------------------------------------------------------- files


def resolve_files(path: Path | str) -> list[Path]:
    """A file, a directory (its *.parquet files, else *.csv), or a glob -> sorted file list."""
    text = str(path)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in globlib.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"no files match {text}; check the pattern")
        return files
    p = Path(path)
    if p.is_dir():
        for suffixes in (PARQUET_SUFFIXES, CSV_SUFFIXES):
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in suffixes)
            if files:
                return files
        raise DataError(f"{p} holds no .parquet or .csv files; point at the data files")
    if not p.exists():
        raise DataError(f"{p} does not exist; check the path")
    return [p]


def file_format(files: Sequence[Path]) -> Literal["parquet", "csv"]:
    kinds = {"parquet" if f.suffix.lower() in PARQUET_SUFFIXES else "csv" for f in files}
    if len(kinds) > 1:
        raise DataError(f"{_names(files)} mixes Parquet and CSV files; keep one format")
    return kinds.pop()  # type: ignore[return-value]


def check_text_file(path: Path) -> None:
    """Refuse empty and binary files before polars sees them."""
    try:
        head = _head(path)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {first_line(exc)}") from None
    check_text_head(head, str(path))


def check_text_head(head: bytes, where: str, utf8: bool = True) -> None:
    """Refuse empty, binary or (when `utf8`) non-UTF-8 text given its first bytes."""
    if not head.strip():
        raise DataError(f"{where} is empty; expected a header line and data rows")
    if b"\x00" in head:
        raise DataError(f"{where} is a binary file, not text/CSV; pass the right file")
    if not utf8:
        return
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte char cut at the end of the head is fine
            raise DataError(
                f"{where} is not UTF-8 text (bad byte at offset {exc.start}); "
                "re-encode it as UTF-8 or pass the right file"
            ) from None


def _head(path: Path, n: int = 65536) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _head_lines(path: Path, max_bytes: int = 1 << 20, max_lines: int = SAMPLE_ROWS + 1) -> bytes:
    """The header and first rows of a text file (whole lines only), for cheap checks."""
    with open(path, "rb") as fh:
        head = fh.read(max_bytes)
        more = bool(fh.read(1))
    lines = head.split(b"\n")
    if more:
        lines = lines[:-1]  # the last line may be cut
    return b"\n".join(line for line in lines[:max_lines] if line.strip()) + b"\n"


def csv_separator(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def csv_header(path: Path, separator: str) -> list[str]:
    check_text_file(path)
    try:
        return pl.read_csv(path, separator=separator, n_rows=0, infer_schema=False).columns
    except _ERROR_TYPES as exc:
        raise DataError(f"cannot read the header of {path}: {first_line(exc)}") from None


def parquet_schema(path: Path) -> tuple[pa.Schema, int]:
    """Arrow schema and row count from a Parquet footer (cheap: no data pages are read)."""
    try:
        meta = pq.ParquetFile(path)
        return meta.schema_arrow, meta.metadata.num_rows
    except _ERROR_TYPES as exc:
        raise DataError(
            f"{path} is not a readable Parquet file ({first_line(exc)}); it may be truncated "
            "or not Parquet at all: re-export it"
        ) from None


def require_columns(found: Sequence[str], wanted: Sequence[str], where: Path | str) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise DataError(
            f"{where} has no column {', '.join(repr(m) for m in missing)} "
            f"(columns found: {', '.join(found)}); fix the column mapping or the file"
        )


# --------------------------------------------------------------------------- typing


def id_expr(name: str, dtype: pl.DataType, where: str, role: str) -> pl.Expr:
    """Ids stay integers (as Int64) or strings; anything else is refused."""
    if dtype.is_integer():
        return pl.col(name).cast(pl.Int64)
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return pl.col(name).cast(pl.String)
    raise DataError(
        f"{where}: {role} column {name!r} has type {dtype}; ids must be integers or strings "
        "(cast it in the file, e.g. floats with NaN to Int64)"
    )


def ts_expr(name: str, dtype: pl.DataType, mapping: ColumnMapping, where: str) -> pl.Expr:
    """Any supported timestamp column -> Int64 seconds since the epoch (UTC)."""
    col = pl.col(name)
    divisor = _UNIT_DIVISOR[mapping.ts_unit]
    if dtype.is_integer():
        out = col.cast(pl.Int64)
        return out if divisor == 1 else out.floordiv(divisor)
    if dtype.is_float():
        return (col.cast(pl.Float64) / divisor).floor().cast(pl.Int64)
    if isinstance(dtype, pl.Datetime):
        return col.dt.epoch("s")
    if dtype == pl.Date:
        return col.cast(pl.Datetime("us")).dt.epoch("s")
    if dtype == pl.String:
        return col.str.to_datetime(format=mapping.ts_format, time_zone="UTC").dt.epoch("s")
    raise DataError(
        f"{where}: timestamp column {name!r} has type {dtype}; expected epoch numbers, "
        "datetimes or date strings"
    )


def rating_expr(name: str, dtype: pl.DataType, where: str) -> pl.Expr:
    if dtype.is_numeric():
        return pl.col(name).cast(pl.Float32)
    raise DataError(
        f"{where}: rating column {name!r} has type {dtype}; ratings must be numbers "
        "(map rating=None for implicit feedback)"
    )


def interaction_exprs(schema: pl.Schema, mapping: ColumnMapping, where: str) -> list[pl.Expr]:
    """Select-expressions that turn a raw table into the RawLog interaction columns."""
    exprs = [
        id_expr(mapping.user, schema[mapping.user], where, "user").alias(USER_ID),
        id_expr(mapping.item, schema[mapping.item], where, "item").alias(ITEM_ID),
        ts_expr(mapping.timestamp, schema[mapping.timestamp], mapping, where).alias(TS),
    ]
    if mapping.rating:
        exprs.append(rating_expr(mapping.rating, schema[mapping.rating], where).alias(RATING))
    exprs += [pl.col(c) for c in mapping.context if c not in (USER_ID, ITEM_ID, TS, RATING)]
    return exprs


def check_sample(sample: pl.LazyFrame, exprs: list[pl.Expr], where: str, mapping) -> None:
    """Run the final conversion on the first rows so type errors show at open time."""
    try:
        out = sample.select(exprs).collect()
    except _ERROR_TYPES as exc:
        hint = "check the column types"
        msg = first_line(exc)
        if mapping.timestamp in msg or "datetime" in msg or "strptime" in msg:
            hint = "give ts_format (strftime) or ts_unit for the timestamp column"
        raise DataError(f"{where}: {msg}; {hint}") from None
    for column, role in ((USER_ID, mapping.user), (ITEM_ID, mapping.item), (TS, mapping.timestamp)):
        if out.height and out[column].null_count() == out.height:
            raise DataError(
                f"{where}: column {role!r} is empty (all null) in the first rows; "
                "check the column mapping"
            )


# --------------------------------------------------------------------------- sources


def _csv_dtype(dtype: pl.DataType) -> pl.DataType:
    """Dtype read for a mapped CSV column, from the type inferred on the first rows."""
    if dtype.is_integer():
        return pl.Int64
    if dtype.is_float():
        return pl.Float64
    return pl.String


def scan_interactions_csv(files: list[Path], mapping: ColumnMapping) -> pl.LazyFrame:
    separator = csv_separator(files[0])
    header = csv_header(files[0], separator)
    require_columns(header, list(mapping.renames()), files[0])
    for f in files[1:]:
        other = csv_header(f, separator)
        if other != header:
            raise DataError(
                f"{f} has columns {', '.join(other)} but {files[0]} has {', '.join(header)}; "
                "all files of one log need the same header"
            )
    head = _head_lines(files[0])
    try:
        inferred = pl.read_csv(
            io.BytesIO(head), separator=separator, infer_schema_length=SAMPLE_ROWS
        ).schema
    except _ERROR_TYPES as exc:
        raise DataError(f"cannot parse {files[0]}: {first_line(exc)}") from None
    used = mapping.renames()
    schema = {c: (_csv_dtype(inferred[c]) if c in used else pl.String) for c in header}
    if mapping.ts_format is not None:
        schema[mapping.timestamp] = pl.String
    where = str(files[0])
    exprs = interaction_exprs(pl.Schema(schema), mapping, where)
    try:
        sample = pl.read_csv(io.BytesIO(head), separator=separator, schema=schema)
    except _ERROR_TYPES as exc:
        raise DataError(f"cannot parse {where}: {first_line(exc)}; check the types") from None
    if sample.height == 0:
        raise DataError(f"{where} has a header but no rows; it holds no interactions")
    check_sample(sample.lazy(), exprs, where, mapping)
    lazy = pl.scan_csv(files, separator=separator, schema=schema, row_index_name=ROW)
    return lazy.select(pl.col(ROW), *exprs)


def scan_interactions_parquet(files: list[Path], mapping: ColumnMapping) -> pl.LazyFrame:
    wanted = list(mapping.renames())
    first_schema, rows = None, 0
    for f in files:
        arrow_schema, n = parquet_schema(f)
        rows += n
        require_columns(arrow_schema.names, wanted, f)
        types = _polars_types(arrow_schema, wanted, f)
        if first_schema is None:
            first_schema = types
        elif types != first_schema:
            diff = [c for c in wanted if types[c] != first_schema[c]]
            raise DataError(
                f"{f}: column {diff[0]!r} is {types[diff[0]]} but {first_schema[diff[0]]} in "
                f"{files[0]}; all files of one log need the same column types"
            )
    if rows == 0:
        raise DataError(f"{_names(files)} holds no rows; it holds no interactions")
    try:
        lazy = pl.scan_parquet(
            files, extra_columns="ignore", missing_columns="raise", row_index_name=ROW
        )
        schema = lazy.collect_schema()
    except _ERROR_TYPES as exc:
        raise DataError(f"cannot read {_names(files)}: {first_line(exc)}") from None
    where = _names(files)
    exprs = interaction_exprs(schema, mapping, where)
    check_sample(lazy.select(wanted).head(SAMPLE_ROWS), exprs, where, mapping)
    return lazy.select(pl.col(ROW), *exprs)


def _polars_types(arrow_schema: pa.Schema, names: list[str], where: Path) -> dict[str, pl.DataType]:
    """Polars dtypes of some Parquet columns (so string/large_string etc. compare equal)."""
    try:
        empty = pl.from_arrow(pa.schema([arrow_schema.field(c) for c in names]).empty_table())
    except _ERROR_TYPES as exc:
        raise DataError(f"{where}: unsupported column type ({first_line(exc)})") from None
    return dict(empty.schema)


def read_table(path: Path | str) -> tuple[pl.DataFrame, list[Path]]:
    """Eagerly read a small side table (items / users): Parquet or CSV."""
    files = resolve_files(path)
    kind = file_format(files)
    if kind == "parquet":
        for f in files:
            parquet_schema(f)
        return collect_or_explain(pl.scan_parquet(files), files), files
    separator = csv_separator(files[0])
    for f in files:
        csv_header(f, separator)
    return collect_or_explain(pl.scan_csv(files, separator=separator), files), files


def read_side_table(
    path: Path | str, key_candidates: Sequence[str | None], key: str, key_dtype: pl.DataType
) -> tuple[pl.DataFrame, list[Path]]:
    """Items / users table keyed by `key` (renamed from the first candidate present)."""
    df, files = read_table(path)
    names = [c for c in key_candidates if c]
    found = next((c for c in names if c in df.columns), None)
    if found is None:
        require_columns(df.columns, names[:1], files[0])
    if df.height == 0:
        raise DataError(f"{files[0]} has no rows; drop it or fill it")
    df = df.rename({found: key}) if found != key else df
    try:
        df = df.with_columns(pl.col(key).cast(key_dtype, strict=True))
    except _ERROR_TYPES:
        raise DataError(
            f"{files[0]}: key column {found!r} ({df.schema[key]}) does not match the "
            f"interaction log's {key} type {key_dtype}; use the same id type in both"
        ) from None
    return df, files


def load_tabular(
    path: Path | str,
    columns: ColumnMapping,
    items: Path | str | None = None,
    users: Path | str | None = None,
    min_rating: float | None = None,
    source: str | None = None,
) -> RawLog:
    """Open a CSV/Parquet interaction log (plus optional items/users tables) as a RawLog."""
    if columns is None:
        raise DataError(
            f"{path}: a CSV/Parquet source needs a column mapping "
            "(which columns are user, item and timestamp)"
        )
    files = resolve_files(path)
    kind = file_format(files)
    if kind == "parquet":
        lazy = scan_interactions_parquet(files, columns)
    else:
        lazy = scan_interactions_csv(files, columns)
    if min_rating is not None:
        if not columns.rating:
            raise DataError(f"{path}: min_rating needs a rating column in the column mapping")
        lazy = lazy.filter(pl.col(RATING) >= min_rating)
    schema = lazy.collect_schema()
    all_files = list(files)
    items_df = users_df = None
    if items is not None:
        items_df, item_files = read_side_table(
            items, [columns.item_key, columns.item, ITEM_ID], ITEM_ID, schema[ITEM_ID]
        )
        all_files += item_files
    if users is not None:
        users_df, user_files = read_side_table(
            users, [columns.user_key, columns.user, USER_ID], USER_ID, schema[USER_ID]
        )
        all_files += user_files
    return RawLog(
        interactions=lazy,
        items=items_df,
        users=users_df,
        source=source or f"{kind} {_names(files)}",
        files=all_files,
    )
