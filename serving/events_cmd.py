"""`recstack events compact` and `recstack events rebuild`: maintenance of the event log.

recstack events compact --log runs/serve/events
recstack events rebuild --log runs/serve/events --store_kind embedded --store_path runs/serve/state.sqlite
recstack events rebuild --log runs/serve/events --store_kind redis --store_url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from recstack.errors import RecstackError
from recstack.serving.event_log import compact, rebuild_store
from recstack.serving.store import open_store
from recstack.serving.store.base import DEFAULT_MAX_HISTORY
from recstack.urls import redacted


def compact_log(log: Path) -> dict[str, int]:
    """Remove erased users' events from disk and seal the segments of writers that are gone.

    Live writers' open segments are left alone: they drop erased users when they seal (at
    least every segment_max_age_s, and on shutdown); rerun this afterwards if the summary
    says open segments were skipped.

    Args:
        log: the event log directory (the serve config's event_log).
    """
    stats = compact(log)
    print(
        f"compacted {log}: {stats['segments_scanned']} sealed segment(s) scanned, "
        f"{stats['segments_rewritten']} rewritten, {stats['segments_removed']} removed, "
        f"{stats['rows_removed']} erased row(s) removed, "
        f"{stats['dead_segments_sealed']} segment(s) of stopped writers sealed, "
        f"{stats['tombstones']} erased user(s) on record"
    )
    if stats["open_segments_skipped"]:
        print(
            f"{stats['open_segments_skipped']} open segment(s) of running writers left as they "
            "are: they drop erased users when sealed; run this again after they seal "
            "(segment_max_age_s) or after the service stops"
        )
    return stats


def rebuild(
    log: Path,
    store_kind: Literal["embedded", "redis"] = "embedded",
    store_path: Path | None = None,
    store_url: str | None = None,
    max_history: int = DEFAULT_MAX_HISTORY,
    prefix: str = "recstack:",
) -> int:
    """Replay the event log into the online store's histories (after the store lost its state).

    Appends each user's view/click/purchase/rating events in time order, so run it on an
    empty store, or right after the service seeded one from its dataset. Erased users are
    left out.

    Args:
        log: the event log directory.
        store_kind: embedded (SQLite file) or redis.
        store_path: the SQLite file, for store_kind embedded.
        store_url: redis://host:port/db, for store_kind redis.
        max_history: items kept per user.
        prefix: Redis key prefix, for store_kind redis.
    """
    if store_kind == "embedded":
        if store_path is None:
            raise RecstackError("--store_kind embedded needs --store_path (the SQLite file)")
        spec = {"kind": "embedded", "path": store_path, "max_history": max_history}
    else:
        if not store_url:
            raise RecstackError("--store_kind redis needs --store_url redis://host:port/db")
        spec = {"kind": "redis", "url": store_url, "max_history": max_history, "prefix": prefix}
    with open_store(spec) as store:
        store.ping()
        written = rebuild_store(log, store, max_history)
    where = store_path if store_kind == "embedded" else redacted(store_url)
    print(f"replayed {written} event(s) from {log} into the {store_kind} store at {where}")
    return written
