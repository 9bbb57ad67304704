"""`EmbeddedStore`: the one-machine online store, a SQLite file in WAL mode.

Several replica processes on one machine share the file: WAL lets readers run beside the one
writer, and a write is visible to every process as soon as it commits. Each process opens its
own connection (reopened after a fork); threads share it under a lock.

Layout (schema version 1, in `PRAGMA user_version`):
    history    (user_key, seq, item_id)   one row per kept item, seq increasing per user
    consent    (user_key, consent JSON)
    onboarding (user_key, item_ids JSON)
    meta       (key, value)
Rows are keyed by sha256(user_id), not the raw id, so an erased user's id cannot survive in a
B-tree interior page or a free page; `secure_delete` zeroes the erased rows, and `erase`
checkpoints the WAL (truncating it when no other process is reading at that moment; otherwise
the old page images are overwritten by later checkpoints).

Durability: `synchronous=NORMAL`: a commit survives a process crash, not a power cut (the
last transactions can be lost). The event log is the durable record; the store is rebuilt
from it (`recstack events rebuild`).

Checkpoints (copying the WAL back into the database file, with an fsync) never run inside a
request's commit: SQLite's automatic checkpoint is off, and a background thread per process
runs a PASSIVE checkpoint (it waits for no reader or writer) every CHECKPOINT_EVERY_S on its
own connection. Their duration is in recstack_disk_seconds{op="store_checkpoint"}.

One row per history item, not a JSON list per user: an append writes one row instead of
rewriting the list (timings: benchmarks/README.md, "Notes from measurements").
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recstack.errors import RecstackError
from recstack.serving.store.base import (
    DEFAULT_MAX_HISTORY,
    OnlineStore,
    StoreUnavailable,
    check_limit,
    consent_record,
)
from recstack.serving.timing import disk

SCHEMA_VERSION = 1
CHECKPOINT_EVERY_S = 1.0
_TABLES = """
CREATE TABLE IF NOT EXISTS history (
    user_key BLOB NOT NULL, seq INTEGER NOT NULL, item_id TEXT NOT NULL,
    PRIMARY KEY (user_key, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consent (user_key BLOB PRIMARY KEY, consent TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS onboarding (user_key BLOB PRIMARY KEY, item_ids TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""
USER_TABLES = ("history", "consent", "onboarding")  # every table with per-user rows


def user_key(user_id: str) -> bytes:
    """The row key of a user: sha256 of the UTF-8 id (32 bytes)."""
    if not isinstance(user_id, str):
        raise RecstackError(f"user ids are strings, got {user_id!r} ({type(user_id).__name__})")
    return hashlib.sha256(user_id.encode()).digest()


def _item_ids(items: Sequence[str]) -> list[str]:
    items = list(items)
    if not all(isinstance(i, str) for i in items):
        bad = next(i for i in items if not isinstance(i, str))
        raise RecstackError(f"item ids are strings, got {bad!r} ({type(bad).__name__})")
    return items


class EmbeddedStore(OnlineStore):
    """Online store in one SQLite file shared by the replica processes of one machine.

    Args:
        path: the database file (created with its parent folders if missing).
        max_history: items kept per user.
        busy_timeout_s: how long a write waits for another process's write before the call
            raises StoreUnavailable.
    """

    def __init__(
        self,
        path: Path | str,
        max_history: int = DEFAULT_MAX_HISTORY,
        busy_timeout_s: float = 2.0,
    ):
        super().__init__(max_history)
        self.path = Path(path)
        self.name = f"embedded store {self.path}"
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._inherited: list[sqlite3.Connection] = []  # from a fork: never used nor closed
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecstackError(
                f"cannot create the store folder {self.path.parent}: {exc}"
            ) from None
        with self._lock:
            self._connection()

    # ------------------------------------------------------------------ connection

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise RecstackError(
                    f"{self.path} is an online store of schema {version}, newer than this "
                    f"recstack's {SCHEMA_VERSION}; upgrade recstack or use another store path"
                )
            if version < SCHEMA_VERSION:
                conn.executescript(
                    f"BEGIN IMMEDIATE; {_TABLES} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
                )
        except sqlite3.DatabaseError as exc:
            raise RecstackError(
                f"cannot open the embedded store {self.path}: {exc}; point the store path at "
                "a new file or at a recstack store"
            ) from None
        return conn

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (call with the lock held)."""
        if self._pid != os.getpid():
            if self._conn is not None:
                self._inherited.append(self._conn)  # a parent's connection: leave it alone
            self._conn, self._pid = self._open(), os.getpid()
            self._stop_checkpoints = threading.Event()
            threading.Thread(
                target=self._checkpoint_loop,
                args=(self._stop_checkpoints,),
                name="store-checkpointer",
                daemon=True,
            ).start()
        if self._conn is None:
            raise RecstackError(f"the embedded store {self.path} is closed")
        return self._conn

    def _checkpoint_loop(self, stop: threading.Event) -> None:
        """Copy the WAL into the database every CHECKPOINT_EVERY_S, off the request path."""
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error:
            return
        try:
            while not stop.wait(CHECKPOINT_EVERY_S):
                start = time.perf_counter()
                try:
                    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    continue  # busy or gone: the next round tries again
                if frames > 0:
                    disk("store_checkpoint", time.perf_counter() - start)
        finally:
            conn.close()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction (IMMEDIATE for writes, a read snapshot otherwise)."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreUnavailable(
                    f"embedded store {self.path}: {exc}; check the disk and that no process "
                    "holds a long write lock"
                ) from None

    # ------------------------------------------------------------------ histories

    def _append(self, conn: sqlite3.Connection, key: bytes, items: list[str]) -> None:
        last = conn.execute("SELECT max(seq) FROM history WHERE user_key=?", (key,)).fetchone()[0]
        start = 0 if last is None else last + 1
        items = items[-self.max_history :]
        conn.executemany(
            "INSERT INTO history VALUES (?, ?, ?)",
            [(key, start + i, item) for i, item in enumerate(items)],
        )
        end = start + len(items)
        if end > self.max_history:
            conn.execute(
                "DELETE FROM history WHERE user_key=? AND seq<?", (key, end - self.max_history)
            )

    def extend_histories(self, histories: Mapping[str, Sequence[str]]) -> None:
        batch = [(user_key(u), _item_ids(items)) for u, items in histories.items() if items]
        if not batch:
            return
        with self._tx(write=True) as conn:
            for key, items in batch:
                self._append(conn, key, items)

    def set_histories(self, histories: Mapping[str, Sequence[str]]) -> None:
        batch = [(user_key(u), _item_ids(items)) for u, items in histories.items()]
        with self._tx(write=True) as conn:
            conn.executemany("DELETE FROM history WHERE user_key=?", [(k,) for k, _ in batch])
            conn.executemany(
                "INSERT INTO history VALUES (?, ?, ?)",
                [
                    (key, i, item)
                    for key, items in batch
                    for i, item in enumerate(items[-self.max_history :])
                ],
            )

    def histories(self, user_ids: Sequence[str], limit: int) -> list[list[str]]:
        if check_limit(limit) == 0:
            return [[] for _ in user_ids]
        keys = [user_key(u) for u in user_ids]
        query = "SELECT item_id FROM history WHERE user_key=? ORDER BY seq DESC LIMIT ?"
        with self._tx() as conn:
            return [[r[0] for r in conn.execute(query, (k, limit)).fetchall()[::-1]] for k in keys]

    # ------------------------------------------------------------------ consent, onboarding, meta

    def set_consent(self, user_id: str, consent: Mapping[str, bool]) -> None:
        record = json.dumps(consent_record(consent), sort_keys=True)
        with self._tx(write=True) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO consent VALUES (?, ?)", (user_key(user_id), record)
            )

    def consent(self, user_id: str) -> dict[str, bool] | None:
        with self._tx() as conn:
            return self._consent(conn, user_key(user_id))

    @staticmethod
    def _consent(conn: sqlite3.Connection, key: bytes) -> dict[str, bool] | None:
        row = conn.execute("SELECT consent FROM consent WHERE user_key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_onboarding(self, user_id: str, item_ids: Sequence[str]) -> None:
        key, items = user_key(user_id), _item_ids(item_ids)
        with self._tx(write=True) as conn:
            if items:
                conn.execute(
                    "INSERT OR REPLACE INTO onboarding VALUES (?, ?)", (key, json.dumps(items))
                )
            else:
                conn.execute("DELETE FROM onboarding WHERE user_key=?", (key,))

    def onboarding(self, user_id: str) -> list[str]:
        with self._tx() as conn:
            return self._onboarding(conn, user_key(user_id))

    @staticmethod
    def _onboarding(conn: sqlite3.Connection, key: bytes) -> list[str]:
        row = conn.execute("SELECT item_ids FROM onboarding WHERE user_key=?", (key,)).fetchone()
        return [] if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx(write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def get_meta(self, key: str) -> str | None:
        with self._tx() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    # ------------------------------------------------------------------ the user as a whole

    def user_data(self, user_id: str) -> dict[str, Any]:
        key = user_key(user_id)
        query = "SELECT item_id FROM history WHERE user_key=? ORDER BY seq"
        with self._tx() as conn:
            return {
                "user_id": user_id,
                "history": [r[0] for r in conn.execute(query, (key,))],
                "consent": self._consent(conn, key),
                "onboarding": self._onboarding(conn, key),
            }

    def erase(self, user_id: str) -> bool:
        key = user_key(user_id)
        with self._tx(write=True) as conn:
            removed = sum(
                conn.execute(f"DELETE FROM {table} WHERE user_key=?", (key,)).rowcount
                for table in USER_TABLES
            )
        with self._lock:
            try:  # best effort: drop the old page images from the WAL file now
                self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error:
                pass
        return removed > 0

    def known(self, user_id: str) -> bool:
        key = user_key(user_id)
        query = " OR ".join(
            f"EXISTS (SELECT 1 FROM {table} WHERE user_key=?1)" for table in USER_TABLES
        )
        with self._tx() as conn:
            return bool(conn.execute(f"SELECT {query}", (key,)).fetchone()[0])

    def ping(self) -> None:
        with self._tx() as conn:
            conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._stop_checkpoints.set()
                self._conn.close()
            self._conn = None
