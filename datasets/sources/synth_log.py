"""The synthetic generator's output as a source (`synth:<dir>`): its layout, and its reader.

`recstack data synth` (datasets/synth.py) writes this layout; `open_source` reads it here, so
neither side imports the other.

    <dir>/events/*.parquet   user_id, item_id, ts and the context columns (already our names)
    <dir>/items.parquet      item features (optional)
    <dir>/users.parquet      user attributes (optional)
"""

from __future__ import annotations

from pathlib import Path

from recstack.datasets.sources import RawLog
from recstack.datasets.sources.tabular import ColumnMapping, load_tabular
from recstack.errors import DataError
from recstack.schema import DEVICE, ITEM_ID, ITEMS_FILE, TS, USER_ID, USERS_FILE

EVENTS_DIR = "events"
SYNTH_CONTEXT = [DEVICE]  # context columns written by the synthetic generator


def synth_mapping() -> ColumnMapping:
    """How the synthetic generator's events are laid out (already in our column names)."""
    return ColumnMapping(user=USER_ID, item=ITEM_ID, timestamp=TS, context=list(SYNTH_CONTEXT))


def load_synth_log(
    root: Path,
    columns: ColumnMapping | None = None,
    items: Path | None = None,
    users: Path | None = None,
    min_rating: float | None = None,
) -> RawLog:
    """The generator's output dir `root` as a RawLog; `items` / `users` replace its tables."""
    root = Path(root)
    events = root / EVENTS_DIR
    if not events.is_dir():
        raise DataError(
            f"{root} has no {EVENTS_DIR}/ folder; point synth: at the synthetic "
            "generator's output directory"
        )
    items_path = root / ITEMS_FILE
    users_path = root / USERS_FILE
    return load_tabular(
        events,
        columns or synth_mapping(),
        items=items if items is not None else (items_path if items_path.is_file() else None),
        users=users if users is not None else (users_path if users_path.is_file() else None),
        min_rating=min_rating,
        source=f"synthetic log {root} ({EVENTS_DIR}/*.parquet)",
    )
