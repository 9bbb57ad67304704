"""The service's durable, append-only event log (Arrow IPC while open, Parquet once sealed).

File layout, schema and reading: `recstack.event_log_format` (shared with the `events:` source
of `recstack data prepare`). This module writes: `EventLog` (one per writer process),
`tombstone` (erasure), `compact`, and `rebuild_store` (replay into the online store).

Durability: `EventLog.append` returns once its rows are fsynced. Several replica processes
append to one directory at once, each to its own segment file (pid and start time in the
name), so no file ever has two writers.

Erasure, and the rule for live writers:
1. `tombstone(dir, user_id)` durably records sha256(user_id) and the time; from then on every
   reader (`read_events`, `events:` source, `rebuild_store`) leaves out that user's rows
   received at or before it. The raw id is written nowhere. Later events of the same id are
   new data and are kept.
2. `compact(dir)` rewrites every sealed segment holding such rows, and seals the open segments
   of writers that are gone (same host, pid no longer running), without those rows.
3. A live writer's open segment is never touched by compaction (its writer still appends to
   it); instead, sealing applies the tombstones, and every writer seals at least every
   `segment_max_age_s` (default 5 min; a background thread checks even without appends) and on
   close. So erased rows are gone from disk once the live segments have been sealed and
   `compact` has run; `compact` reports `open_segments_skipped` so a caller can tell whether
   a rerun is needed (the erasure endpoint seals its own segment at once with `seal()`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock

from recstack.durable import fsync_dir
from recstack.errors import DataError, RecstackError
from recstack.event_log_format import (
    ERASED_AT,
    EVENT_SCHEMA,
    EVENT_TYPES,
    INTERACTION_TYPES,
    MAX_EVENT_VALUE,
    OPEN_SUFFIX,
    SEALED_SUFFIX,
    TOMBSTONE_SCHEMA,
    TOMBSTONES_DIR,
    USER_HASH,
    SegmentName,
    check_log_dir,
    drop_erased,
    erased_rows,
    read_events,
    read_open,
    read_sealed,
    read_tombstones,
    safe_name,
    segment_files,
    this_host,
    user_hash,
)
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
from recstack.serving.store.base import OnlineStore
from recstack.serving.timing import disk

__all__ = [
    "EVENT_SCHEMA",
    "EVENT_TYPES",
    "INTERACTION_TYPES",
    "EventLog",
    "compact",
    "read_events",
    "rebuild_store",
    "tombstone",
]

log = logging.getLogger(__name__)
LOCK_FILE = ".compact.lock"
SEAL_TMP, COMPACT_TMP = ".seal.tmp", ".compact.tmp"
_OPTIONAL_TEXT = (ARM, MODEL_VERSION, REQUEST_ID)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- files


def _write_parquet_atomic(table: pa.Table, path: Path, tmp_suffix: str) -> None:
    """Write `table` to `path` durably: temp file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}{tmp_suffix}")
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


# --------------------------------------------------------------------------- rows


def _text(row: Mapping[str, Any], name: str, i: int, required: bool) -> str | None:
    value = row.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise DataError(f"event {i}: {name} must be a non-empty string, got {value!r}")
    return value


def _value(row: Mapping[str, Any], i: int) -> float | None:
    """An optional amount: a finite number 0..MAX_EVENT_VALUE (the API checks it first)."""
    value = row.get(VALUE)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 <= value <= MAX_EVENT_VALUE:  # NaN fails this too
            return float(value)
    raise DataError(
        f"event {i}: value must be a finite number 0..{MAX_EVENT_VALUE:g}, got {value!r}"
    )


def event_batch(rows: Sequence[Mapping[str, Any]], received_at: int) -> pa.RecordBatch:
    """Validated rows -> one record batch in EVENT_SCHEMA (context dicts become JSON text)."""
    columns: dict[str, list] = {name: [] for name in EVENT_SCHEMA.names}
    for i, row in enumerate(rows):
        unknown = set(row) - set(EVENT_SCHEMA.names)
        if unknown:
            raise DataError(f"event {i}: unknown field(s) {', '.join(sorted(unknown))}")
        for name in (USER_ID, ITEM_ID):
            columns[name].append(_text(row, name, i, required=True))
        kind = row.get(EVENT_TYPE)
        if kind not in EVENT_TYPES:
            raise DataError(
                f"event {i}: type must be one of {', '.join(EVENT_TYPES)}, got {kind!r}"
            )
        columns[EVENT_TYPE].append(kind)
        for name, default in ((TS, None), (RECEIVED_AT, received_at)):
            value = row.get(name, default)
            if not isinstance(value, int) or isinstance(value, bool):
                raise DataError(f"event {i}: {name} must be an integer, got {value!r}")
            columns[name].append(value)
        for name in _OPTIONAL_TEXT:
            columns[name].append(_text(row, name, i, required=False))
        context = row.get(CONTEXT)
        if isinstance(context, Mapping):
            context = json.dumps(context, sort_keys=True, separators=(",", ":"), default=str)
        elif context is not None and not isinstance(context, str):
            raise DataError(f"event {i}: context must be an object, got {context!r}")
        columns[CONTEXT].append(context)
        columns[VALUE].append(_value(row, i))
    try:
        return pa.RecordBatch.from_pydict(columns, schema=EVENT_SCHEMA)
    except (pa.ArrowInvalid, OverflowError) as exc:
        raise DataError(f"events do not fit the log schema: {exc}") from None


# --------------------------------------------------------------------------- writer


class _OpenSegment:
    """This process's open IPC stream file."""

    def __init__(self, directory: Path, writer: str):
        self.name = SegmentName(now_ms(), os.getpid(), this_host(), writer, secrets.token_hex(3))
        self.path = directory / f"{self.name.stem}{OPEN_SUFFIX}"
        self.started = time.monotonic()
        self.rows = 0
        self._file = open(self.path, "xb")  # closed in close()
        self._stream = pa.ipc.new_stream(self._file, EVENT_SCHEMA)
        fsync_dir(directory)

    def write(self, batch: pa.RecordBatch) -> None:
        self._stream.write_batch(batch)
        self._file.flush()
        start = time.perf_counter()
        os.fsync(self._file.fileno())
        disk("event_log_fsync", time.perf_counter() - start)
        self.rows += batch.num_rows

    def close(self) -> None:
        self._stream.close()  # end-of-stream marker
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def seal_segment(path: Path, tombstones: dict[str, int]) -> tuple[int, int]:
    """Open IPC segment -> sealed Parquet without erased rows; the IPC file is deleted.

    Returns (rows kept, rows removed). A segment left empty leaves no file.
    """
    table, _ = read_open(path)
    kept = drop_erased(table, tombstones)
    if kept.num_rows:
        _write_parquet_atomic(kept, path.with_suffix(SEALED_SUFFIX), SEAL_TMP)
    _unlink(path)
    return kept.num_rows, table.num_rows - kept.num_rows


class EventLog:
    """One writer process's handle on a shared log directory.

    Appends never wait for a seal: a full or old segment is closed under the append lock (an
    end-of-stream marker and an fsync) and a background thread turns it into Parquet while
    the next appends go to a new segment. `seal()` and `close()` seal at once.

    Args:
        directory: the log directory (created if missing).
        writer: a name for this writer in its file names (e.g. the replica id); default "events".
        segment_max_events: seal the open segment once it holds this many rows.
        segment_max_age_s: seal it once it is this old (checked on append and by the
            background thread); 0 turns age sealing off.
    """

    def __init__(
        self,
        directory: Path | str,
        writer: str | None = None,
        segment_max_events: int = 100_000,
        segment_max_age_s: float = 300,
    ):
        if segment_max_events < 1 or segment_max_age_s < 0:
            raise RecstackError(
                "segment_max_events must be >= 1 and segment_max_age_s >= 0, got "
                f"{segment_max_events} and {segment_max_age_s}"
            )
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecstackError(f"cannot create the event log folder {directory}: {exc}") from None
        self.writer = safe_name(writer or "events")
        self.segment_max_events = segment_max_events
        self.segment_max_age_s = segment_max_age_s
        self._lock = threading.Lock()  # the open segment (appends)
        self._pending_lock = threading.Lock()  # the closed segments waiting for their seal
        self._sealing = threading.Lock()  # one seal at a time
        self._segment: _OpenSegment | None = None
        self._to_seal: list[_OpenSegment] = []
        self._pid = os.getpid()
        self._closed = False
        self._stop, self._wake = threading.Event(), threading.Event()
        self._sealer = threading.Thread(target=self._seal_in_background, daemon=True)
        self._sealer.name = "event-log-sealer"
        self._sealer.start()

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append events; returns once they are durable (fsynced). Bad rows raise DataError
        and nothing of the call is written. `received_at` defaults to the server time (ms)."""
        if not rows:
            return
        batch = event_batch(rows, now_ms())
        with self._lock:
            self._check_usable()
            if self._segment is None:
                self._segment = _OpenSegment(self.directory, self.writer)
            self._segment.write(batch)
            if self._due():
                self._close_segment_locked()
                self._wake.set()

    def seal(self) -> None:
        """Seal the open segment now (e.g. after an erasure, so its rows go at once)."""
        with self._lock:
            self._check_usable()
            self._close_segment_locked()
        self._seal_closed()

    def close(self) -> None:
        """Seal the open segment and stop; further appends raise."""
        self._stop.set()
        self._wake.set()
        if self._sealer is not threading.current_thread():
            self._sealer.join()
        with self._lock:
            mine = not self._closed and self._pid == os.getpid()
            if mine:
                self._close_segment_locked()
            self._closed = True
        if mine:
            self._seal_closed()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_usable(self) -> None:
        if self._closed:
            raise RecstackError(f"the event log writer on {self.directory} is closed")
        if self._pid != os.getpid():
            raise RecstackError(
                "this EventLog was opened in another process (fork); open one per process"
            )

    def _due(self) -> bool:
        seg = self._segment
        return seg is not None and (
            seg.rows >= self.segment_max_events
            or (
                self.segment_max_age_s > 0
                and time.monotonic() - seg.started >= self.segment_max_age_s
            )
        )

    def _close_segment_locked(self) -> None:
        """End the open segment (durable, still readable as IPC); it waits for its seal."""
        segment, self._segment = self._segment, None
        if segment is not None:
            segment.close()
            with self._pending_lock:
                self._to_seal.append(segment)

    def _seal_closed(self) -> None:
        """Seal every closed segment (Parquet, tombstones applied); appends go on meanwhile.
        Returns once none is waiting and none is being sealed."""
        with self._sealing:
            while True:
                with self._pending_lock:
                    if not self._to_seal:
                        return
                    segment = self._to_seal.pop(0)
                start = time.perf_counter()
                try:
                    seal_segment(segment.path, read_tombstones(self.directory))
                except Exception:  # the rows are durable in the IPC file; sealing can wait
                    log.exception("sealing an event log segment failed; it stays readable")
                disk("event_log_seal", time.perf_counter() - start)

    def _seal_in_background(self) -> None:
        interval = 5.0 if self.segment_max_age_s == 0 else self.segment_max_age_s / 4
        interval = min(5.0, max(0.05, interval))
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._pid != os.getpid():
                return  # a forked child: the parent's sealer is not ours
            with self._lock:
                if not self._closed and self._due():
                    self._close_segment_locked()
            self._seal_closed()


# --------------------------------------------------------------------------- erasure


def tombstone(directory: Path | str, user_id: str) -> None:
    """Durably record that `user_id` was erased now (only its sha256 is written)."""
    folder = check_log_dir(Path(directory)) / TOMBSTONES_DIR
    folder.mkdir(exist_ok=True)
    table = pa.table({USER_HASH: [user_hash(user_id)], ERASED_AT: [now_ms()]}, TOMBSTONE_SCHEMA)
    _write_parquet_atomic(
        table, folder / f"{now_ms():013d}-{secrets.token_hex(4)}.parquet", SEAL_TMP
    )


def _merge_tombstones(directory: Path) -> int:
    """Fold the tombstone files into one; returns how many files were merged."""
    folder = directory / TOMBSTONES_DIR
    files = sorted(p for p in folder.glob(f"*{SEALED_SUFFIX}") if not p.name.startswith("."))
    if len(files) < 2:
        return 0
    merged = (
        pl.concat([pl.read_parquet(p) for p in files])
        .group_by(USER_HASH)
        .agg(pl.col(ERASED_AT).max())
    )
    target = folder / f"{now_ms():013d}-merged-{secrets.token_hex(4)}.parquet"
    _write_parquet_atomic(
        merged.sort(USER_HASH).to_arrow().cast(TOMBSTONE_SCHEMA), target, COMPACT_TMP
    )
    for p in files:
        _unlink(p)
    return len(files)


def _clean_work_files(directory: Path, stale_after_s: float = 3600) -> int:
    """Remove temp files left by crashed compactions (we hold the lock), by sealings of
    writers now gone, and any other temp file older than `stale_after_s`."""
    removed = 0
    for tmp in [*directory.glob(".*.tmp"), *directory.glob(f"{TOMBSTONES_DIR}/.*.tmp")]:
        name = SegmentName.parse(tmp.name[1:].split(".", 1)[0])
        try:
            old = time.time() - tmp.stat().st_mtime > stale_after_s
        except FileNotFoundError:
            continue
        if tmp.name.endswith(COMPACT_TMP) or old or (name is not None and not name.writer_alive()):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def compact(directory: Path | str) -> dict[str, int]:
    """Remove erased users' rows from disk and seal the segments of writers that are gone.

    Rewrites each sealed segment that holds erased rows (new file, fsync, rename), seals open
    segments whose writer process no longer runs, leaves live writers' open segments alone
    (see the module docstring), merges tombstone files, and removes stale temp files. One
    compaction at a time (a lock file); writers and readers may run meanwhile.

    Returns counts: segments_scanned, segments_rewritten, segments_removed, rows_removed,
    dead_segments_sealed, open_segments_skipped, tombstones, temp_files_removed.
    """
    directory = check_log_dir(Path(directory))
    stats = dict.fromkeys(
        (
            "segments_scanned",
            "segments_rewritten",
            "segments_removed",
            "rows_removed",
            "dead_segments_sealed",
            "open_segments_skipped",
            "tombstones",
            "temp_files_removed",
        ),
        0,
    )
    with FileLock(directory / LOCK_FILE):
        tombstones = read_tombstones(directory)
        stats["tombstones"] = len(tombstones)
        sealed, opened = segment_files(directory)
        for path in directory.glob(f"*{OPEN_SUFFIX}"):  # sealed twin exists: a leftover
            if path.with_suffix(SEALED_SUFFIX).is_file() and not path.name.startswith("."):
                name = SegmentName.parse(path.stem)
                if name is None or not name.writer_alive():
                    _unlink(path)
        for path in opened:
            name = SegmentName.parse(path.stem)
            if name is None or name.writer_alive():
                stats["open_segments_skipped"] += 1
                continue
            _, removed = seal_segment(path, tombstones)
            stats["dead_segments_sealed"] += 1
            stats["rows_removed"] += removed
        for path in sealed:
            stats["segments_scanned"] += 1
            mask = erased_rows(read_sealed(path, [USER_ID, RECEIVED_AT]), tombstones)
            if mask is None:
                continue
            kept = read_sealed(path).filter(pc.invert(mask))
            stats["rows_removed"] += len(mask) - kept.num_rows
            if kept.num_rows:
                _write_parquet_atomic(kept, path, COMPACT_TMP)
                stats["segments_rewritten"] += 1
            else:
                _unlink(path)
                stats["segments_removed"] += 1
        if (directory / TOMBSTONES_DIR).is_dir():
            _merge_tombstones(directory)
        stats["temp_files_removed"] = _clean_work_files(directory)
    return stats


# --------------------------------------------------------------------------- replay


def rebuild_store(directory: Path | str, store: OnlineStore, max_history: int) -> int:
    """Replay the log's view/click/purchase/rating events into the store's histories.

    Events go in time order (ts, then arrival, then log order), each user's last
    `max_history` appended to what the store holds: run it on an empty store, or right after
    seeding one (the usual recovery: `seed_from_dataset`, then this). Erased users are left
    out. Returns the number of events written.
    """
    table = read_events(Path(directory)).select([USER_ID, ITEM_ID, EVENT_TYPE, TS, RECEIVED_AT])
    keep = min(max_history, store.max_history)
    histories = (
        pl.from_arrow(table)
        .with_row_index("_order")
        .filter(pl.col(EVENT_TYPE).is_in(INTERACTION_TYPES))
        .sort([TS, RECEIVED_AT, "_order"])
        .group_by(USER_ID, maintain_order=True)
        .agg(pl.col(ITEM_ID).tail(keep))
    )
    written = 0
    for chunk in histories.iter_slices(2_000):
        batch = dict(zip(chunk[USER_ID], chunk[ITEM_ID].to_list(), strict=True))
        store.extend_histories(batch)
        written += sum(len(v) for v in batch.values())
    return written
