"""The event log's on-disk contract: schema, file names, reading, and the erasure filter.

Written by `recstack.serving.event_log` (the service), read by it and by the `events:` source
of `recstack data prepare` (the feedback loop). It lives here, beside the manifest contract,
so that datasets/ reads the log without importing serving/ (dependency direction:
datasets -> recstack <- serving).

A log directory holds:
    <stem>.arrow             an open segment: Arrow IPC stream, one writer process appends
                             record batches to it (each fsynced); a crash leaves a readable
                             prefix (a cut last batch is ignored)
    <stem>.parquet           a sealed segment (written to a temp name, fsynced, renamed)
                             Segments written before a column was added (ADDED_COLUMNS) lack
                             it; readers fill it with nulls, so the format version stays "1"
    tombstones/*.parquet     erased users: sha256(user_id) and the erasure time; rows of that
                             user received at or before it are dropped by every reader
    .*.tmp, .compact.lock    work files, ignored by readers
    stem = <start ms, 13 digits>_<pid>_<host>_<writer>_<random>
If a stem has both files (a crash between sealing and deleting the .arrow), the .parquet wins.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recstack.errors import DataError, first_line
from recstack.schema import (
    ARM,
    CONTEXT,
    EVENT_TYPE,
    ITEM_ID,
    MODEL_VERSION,
    RECEIVED_AT,
    REQUEST_ID,
    TS,
    USER_ID,
    VALUE,
)

EVENT_TYPES = ("view", "click", "purchase", "impression", "rating")
INTERACTION_TYPES = ("view", "click", "purchase", "rating")  # feed histories and training
LOG_FORMAT_VERSION = "1"  # unchanged by `value`: old segments read with it null (conform)
MAX_EVENT_VALUE = 1e9  # an event's `value` (purchase amount, watch time) is finite, 0..this
EVENT_SCHEMA = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(EVENT_TYPE, pa.string(), nullable=False),
        pa.field(TS, pa.int64(), nullable=False),  # event time, seconds (as the client sent it)
        pa.field(RECEIVED_AT, pa.int64(), nullable=False),  # server time, milliseconds
        pa.field(ARM, pa.string()),
        pa.field(MODEL_VERSION, pa.string()),
        pa.field(REQUEST_ID, pa.string()),
        pa.field(CONTEXT, pa.string()),  # JSON object text
        pa.field(VALUE, pa.float64()),  # optional amount, 0..MAX_EVENT_VALUE
    ],
    metadata={"recstack_event_log": LOG_FORMAT_VERSION},
)
ADDED_COLUMNS = (VALUE,)  # nullable columns added after format "1" was first written
USER_HASH, ERASED_AT = "user_hash", "erased_at"  # tombstone columns (hex sha256, ms)
TOMBSTONE_SCHEMA = pa.schema([(USER_HASH, pa.string()), (ERASED_AT, pa.int64())])
TOMBSTONES_DIR = "tombstones"
OPEN_SUFFIX, SEALED_SUFFIX = ".arrow", ".parquet"
_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")


def safe_name(text: str) -> str:
    """A host or writer name usable inside a segment stem (letters, digits and '-' only)."""
    return _UNSAFE.sub("-", text).strip("-") or "x"


def this_host() -> str:
    return safe_name(socket.gethostname())


@dataclass(frozen=True)
class SegmentName:
    """Who writes a segment: parsed from, and formatted into, its file stem."""

    start_ms: int
    pid: int
    host: str
    writer: str
    tag: str

    @property
    def stem(self) -> str:
        return f"{self.start_ms:013d}_{self.pid}_{self.host}_{self.writer}_{self.tag}"

    @classmethod
    def parse(cls, stem: str) -> SegmentName | None:
        parts = stem.split("_")
        if len(parts) != 5 or not parts[0].isdigit() or not parts[1].isdigit():
            return None
        return cls(int(parts[0]), int(parts[1]), parts[2], parts[3], parts[4])

    def writer_alive(self) -> bool:
        """False only when the writer surely exited: same host and no process with its pid.

        A reused pid reads as alive, which is the safe side (its segment is left alone).
        """
        if self.host != this_host():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def user_hash(user_id: str) -> str:
    """Hex sha256 of a user id: how tombstones name a user without storing the id."""
    return hashlib.sha256(str(user_id).encode()).hexdigest()


# --------------------------------------------------------------------------- files


def check_log_dir(directory: Path) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(
            f"{directory} is not an event log directory (it does not exist); point at the "
            "service's events folder"
        )
    return directory


def segment_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """(sealed, open) segment files in start-time order; an open one with a sealed twin is left out."""
    directory = check_log_dir(directory)
    sealed = sorted(p for p in directory.glob(f"*{SEALED_SUFFIX}") if not p.name.startswith("."))
    stems = {p.stem for p in sealed}
    opened = sorted(
        p
        for p in directory.glob(f"*{OPEN_SUFFIX}")
        if not p.name.startswith(".") and p.stem not in stems
    )
    return sealed, opened


def conform(table: pa.Table, where: Path) -> pa.Table:
    """A segment's table in exactly EVENT_SCHEMA (column order and types); a segment from
    before an ADDED_COLUMNS column gets that column as nulls."""
    for name in ADDED_COLUMNS:
        if name not in table.column_names:
            field = EVENT_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    missing = [n for n in EVENT_SCHEMA.names if n not in table.column_names]
    if missing:
        raise DataError(
            f"{where} is not an event log segment (no column {', '.join(missing)}); move "
            "foreign files out of the log directory"
        )
    try:
        return table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"{where}: unexpected column types ({first_line(exc)})") from None


def read_sealed(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A sealed segment (all columns conformed to EVENT_SCHEMA unless `columns` is given)."""
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DataError(
            f"{path} is not a readable Parquet segment ({first_line(exc)}); move it out of "
            "the log directory"
        ) from None
    return table if columns is not None else conform(table, path)


# Batches merged at a time while reading an open segment (see read_open).
_MERGE_BATCHES = 64


def read_open(path: Path) -> tuple[pa.Table, bool]:
    """The complete record batches of an open (or crashed) IPC segment, and whether its tail was cut.

    One append is one record batch, so a segment holds thousands of tiny ones. They are merged
    64 at a time as they are read: a table of thousands of chunks makes the Parquet write slow,
    and freeing it holds the GIL for tens of ms, which stalls the event loop of the replica that
    seals it (docs/architecture.md §9)."""
    data = path.read_bytes()  # one snapshot of a file its writer may still be appending to
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError):
        return EVENT_SCHEMA.empty_table(), len(data) > 0  # cut inside the schema message
    merged: list[pa.Table] = []
    batches: list[pa.RecordBatch] = []
    truncated = False
    while True:
        try:
            batches.append(reader.read_next_batch())
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError):
            truncated = True
            break
        if len(batches) == _MERGE_BATCHES:
            merged.append(pa.Table.from_batches(batches, schema=reader.schema).combine_chunks())
            batches = []
    merged.append(pa.Table.from_batches(batches, schema=reader.schema))
    return conform(pa.concat_tables(merged).combine_chunks(), path), truncated


# --------------------------------------------------------------------------- erasure


def read_tombstones(directory: Path) -> dict[str, int]:
    """{sha256(user_id): erasure time in ms} from every tombstone file (latest erasure wins)."""
    folder = Path(directory) / TOMBSTONES_DIR
    if not folder.is_dir():
        return {}
    out: dict[str, int] = {}
    for path in sorted(folder.glob(f"*{SEALED_SUFFIX}")):
        if path.name.startswith("."):
            continue
        try:
            table = pq.read_table(path)
        except FileNotFoundError:
            continue  # merged away by a concurrent compaction; the merged file holds it
        for h, at in zip(table[USER_HASH].to_pylist(), table[ERASED_AT].to_pylist(), strict=True):
            out[h] = max(at, out.get(h, at))
    return out


def tombstoned_ids(user_ids: Iterable[str], hashes: Collection[str]) -> list[str]:
    """The ids among `user_ids` whose sha256 is in `hashes` (tombstones, any erasure time)."""
    return [u for u in user_ids if user_hash(u) in hashes] if hashes else []


def erased_rows(table: pa.Table, tombstones: dict[str, int]) -> pa.ChunkedArray | None:
    """Boolean mask of rows erased by a tombstone (user matches, received at or before the
    erasure), or None when no row is. `table` needs user_id and received_at."""
    if not tombstones or table.num_rows == 0:
        return None
    uniques = pc.unique(table[USER_ID]).to_pylist()
    hashed = {u: user_hash(u) for u in uniques}
    hit = {u: tombstones[h] for u, h in hashed.items() if h in tombstones}
    if not hit:
        return None
    position = pc.index_in(table[USER_ID], value_set=pa.array(list(hit), pa.string()))
    erased_at = pc.take(pa.array(list(hit.values()), pa.int64()), position)
    mask = pc.fill_null(pc.less_equal(table[RECEIVED_AT], erased_at), False)
    return mask if pc.any(mask).as_py() else None


def drop_erased(table: pa.Table, tombstones: dict[str, int]) -> pa.Table:
    mask = erased_rows(table, tombstones)
    return table if mask is None else table.filter(pc.invert(mask))


# --------------------------------------------------------------------------- reading


def read_events(
    directory: Path, include_open: bool = True, include_erased: bool = False
) -> pa.Table:
    """Every event in a log directory, in EVENT_SCHEMA, segment by segment (start-time order;
    append order inside a segment; not globally sorted).

    Args:
        directory: the event log directory.
        include_open: also read open IPC segments (live or crashed writers), up to their last
            complete record batch.
        include_erased: keep rows of erased (tombstoned) users; only compaction wants this.
    """
    tables = [table for _, table in read_segments(directory, include_open)]
    table = pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()
    return table if include_erased else drop_erased(table, read_tombstones(directory))


def read_segments(directory: Path, include_open: bool = True) -> list[tuple[Path, pa.Table]]:
    """(file, its events in EVENT_SCHEMA) per segment, sealed ones first, each in start-time
    order; erased rows are kept (see `read_events` for the arguments)."""
    sealed, opened = segment_files(directory)
    out = []
    for path in sealed:
        try:
            out.append((path, read_sealed(path)))
        except FileNotFoundError:
            continue  # a compaction emptied and removed it
    for path in opened if include_open else []:
        try:
            out.append((path, read_open(path)[0]))
        except FileNotFoundError:  # sealed since the listing: read the sealed twin
            twin = path.with_suffix(SEALED_SUFFIX)
            if twin.is_file():
                out.append((twin, read_sealed(twin)))
    return out
