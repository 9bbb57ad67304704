"""Seed the online store's histories from a prepared dataset (the service's cold start).

Each user's history becomes their last `max_history` items of the dataset, in time order (ties
in the dataset's stable raw order), replacing what the store held for that user. Erased users
(the event log's tombstones, sha256 of the id) are left out. Idempotent: the dataset's content
hash (from before any `recstack data forget`) is recorded as meta `seeded:<hash>` and a second
call skips.

`SeedWatch` keeps the seed there: a store that lost it (a Redis restarted empty) lacks the
marker, and the watch seeds it again in the background, saying so in readiness and in the
`recstack_store_seeded` gauge meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from pathlib import Path

import polars as pl

from recstack.dataset_dir import DATASET_KIND, load_dataset
from recstack.errors import RecstackError
from recstack.event_log_format import read_tombstones, tombstoned_ids
from recstack.manifest import CONTENT_HASH, read_manifest
from recstack.schema import ITEM_ID, ITEM_IDX, TS, USER_ID, USER_IDX
from recstack.serving import metrics
from recstack.serving.store.base import OnlineStore, StoreUnavailable
from recstack.user_files import ORIGINAL_HASH

SEEDED_META = "seeded:{}"
SEEDING_META = "seeding:{}"  # {"by": host:pid, "at": unix s}: a process is re-seeding
BATCH_USERS = 2_000  # users per store write
# how often a SeedWatch looks for the marker (one meta read): an emptied store is seen within
# about a second; while another process seeds, its end is seen within RECHECK_S
CHECK_EVERY_S = 1.0
RECHECK_S = 0.25
CLAIM_TTL_S = 120.0  # another process's re-seed claim younger than this: let it finish
log = logging.getLogger("recstack.serving")


def seed_key(manifest: dict) -> str:
    """A dataset's seed marker; the same after `recstack data forget` removed users."""
    return SEEDED_META.format(manifest.get(ORIGINAL_HASH, manifest[CONTENT_HASH]))


def seed_from_dataset(
    store: OnlineStore, dataset_dir: Path, max_history: int, event_log: Path | None = None
) -> int:
    """Write each user's last `max_history` items of a prepared dataset as their history.

    Args:
        store: the online store.
        dataset_dir: a `recstack data prepare` output (its manifest hashes are verified).
        max_history: items per user (the store also keeps at most its own max_history).
        event_log: the service's event log dir: users its tombstones name are not written,
            and those erased while this ran are erased from the store again at the end (the
            erasure endpoint tombstones before it erases the store, so none slips through).

    Returns the number of users written; 0 if this dataset was already seeded.
    """
    dataset = load_dataset(Path(dataset_dir), columns=[USER_IDX, ITEM_IDX, TS])
    marker = seed_key(dataset.manifest)
    if store.get_meta(marker) is not None:
        return 0
    keep = min(max_history, store.max_history)
    users = dataset.users.select(USER_IDX, pl.col(USER_ID).cast(pl.String))
    tombstones = read_tombstones(event_log) if event_log is not None else {}
    users = users.filter(~pl.col(USER_ID).is_in(tombstoned_ids(users[USER_ID], tombstones)))
    items = dataset.items.select(ITEM_IDX, pl.col(ITEM_ID).cast(pl.String))
    histories = (
        dataset.interactions.with_row_index("_order")
        .sort([USER_IDX, TS, "_order"])  # the file is in this order already; stable regardless
        .group_by(USER_IDX, maintain_order=True)
        .agg(pl.col(ITEM_IDX).tail(keep))
        .explode(ITEM_IDX)
        .join(items, on=ITEM_IDX, how="left", maintain_order="left")
        .join(users, on=USER_IDX, how="inner", maintain_order="left")  # erased users drop out
        .group_by(USER_ID, maintain_order=True)
        .agg(ITEM_ID)
    )
    written = 0
    for chunk in histories.iter_slices(BATCH_USERS):
        store.set_histories(dict(zip(chunk[USER_ID], chunk[ITEM_ID].to_list(), strict=True)))
        written += chunk.height
    if event_log is not None:  # erased while we wrote: the store erase may have come first
        late = read_tombstones(event_log).keys() - tombstones.keys()
        for user_id in tombstoned_ids(users[USER_ID], late):
            store.erase(user_id)
    store.set_meta(
        marker,
        json.dumps({"users": written, "dataset": str(dataset_dir), "at": int(time.time())}),
    )
    return written


class SeedWatch:
    """Re-seeds a store that lost its seed, from a background thread of this process.

    Every ~CHECK_EVERY_S it reads the marker (one meta read, never on a request's path). When
    it is missing, the watch claims the re-seed in the store's meta (a claim younger than
    CLAIM_TTL_S from another process means that process is at it: wait for its marker) and
    seeds with the event log's current tombstones. Without SET NX two processes can both
    claim; they then write the same histories, which is harmless.

    Args:
        store: the online store.
        dataset_dir: the serve config's `seed_histories_from`.
        max_history: items per user.
        event_log: the event log dir, whose tombstones keep erased users out.
    """

    def __init__(self, store: OnlineStore, dataset_dir: Path, max_history: int, event_log: Path):
        self.store, self.dataset, self.max_history = store, Path(dataset_dir), max_history
        self.event_log = Path(event_log)
        self.marker = seed_key(read_manifest(self.dataset, DATASET_KIND, verify=False))
        self.claim_key = SEEDING_META.format(self.marker.partition(":")[2])
        self.me = f"{socket.gethostname()}:{os.getpid()}"
        self.seeded = True  # until a check finds the marker missing
        self.state = ""  # why not seeded: "re-seeding", "re-seeding in another process", ...
        self._stop = threading.Event()

    def check(self) -> None:
        """Look for the marker; re-seed here unless another process has just claimed it.
        Raises StoreUnavailable and the seed's errors (the background loop logs them)."""
        if self.store.get_meta(self.marker) is not None:
            return self._set(True)
        claim = _claim(self.store.get_meta(self.claim_key))
        if claim.get("by") not in (None, self.me) and time.time() - claim["at"] < CLAIM_TTL_S:
            return self._set(False, "re-seeding in another process")
        self._set(False, "re-seeding")
        log.warning("the online store lacks the histories of %s; seeding them", self.dataset)
        self.store.set_meta(self.claim_key, json.dumps({"by": self.me, "at": time.time()}))
        users = seed_from_dataset(self.store, self.dataset, self.max_history, self.event_log)
        log.warning("seeded %d users' histories from %s", users, self.dataset)
        self._set(True)

    def problems(self) -> list[str]:
        """Readiness lines: empty while the store holds the seed."""
        if self.seeded:
            return []
        return [f"online store: histories not seeded from {self.dataset} ({self.state})"]

    def start(self) -> None:
        """Check in a daemon thread until stop()."""
        threading.Thread(target=self._loop, name="seed-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(
            (CHECK_EVERY_S if self.seeded else RECHECK_S) * random.uniform(0.8, 1.2)
        ):  # the jitter keeps processes from checking in step
            try:
                self.check()
            except StoreUnavailable:
                pass  # readiness reports the store itself; look again next round
            except RecstackError as exc:
                if not self.seeded:
                    self._set(False, f"re-seeding failed, retrying: {exc}")
                log.error("checking the online store's seed failed: %s", exc)

    def _set(self, seeded: bool, state: str = "") -> None:
        self.seeded, self.state = seeded, state
        metrics.STORE_SEEDED.set(1 if seeded else 0)


def _claim(raw: str | None) -> dict:
    try:
        claim = json.loads(raw) if raw else {}
        return claim if isinstance(claim.get("at"), (int, float)) else {}
    except (ValueError, AttributeError):
        return {}
