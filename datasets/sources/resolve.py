"""One entry point from a source spec string to a RawLog.

Specs: `ml-100k | ml-1m | ml-20m | ml-25m` (GroupLens, cached), `recbole:<path>` (RecBole atomic
files: a dir or a `<dir>/<name>` prefix), `csv:<path>` / `parquet:<path>` (a file, a directory
or a glob, with a `ColumnMapping`), `synth:<dir>` (our synthetic generator's output:
`<dir>/events/*.parquet` + `<dir>/items.parquet` + `<dir>/users.parquet`), `events:<dir>` (the
service's event log: its view/click/purchase/rating events, erased users left out; the
feedback loop. Read through `recstack.event_log_format`, the log's contract, which datasets/
shares with serving/ without importing serving/), `seqlines:<file>` (one user per line,
`user item item ...` in time order, integer ids, no timestamps: ts is the position).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recstack.datasets.sources import RawLog
from recstack.datasets.sources.atomic import DEFAULT_FIELDS, load_atomic
from recstack.datasets.sources.movielens import MOVIELENS_NAMES, load_movielens
from recstack.datasets.sources.seqlines import load_seqlines
from recstack.datasets.sources.synth_log import load_synth_log
from recstack.datasets.sources.tabular import (
    ColumnMapping,
    file_format,
    load_tabular,
    read_side_table,
    resolve_files,
)
from recstack.errors import DataError
from recstack.event_log_format import INTERACTION_TYPES, read_events, segment_files
from recstack.schema import (
    CONTEXT,
    DEVICE,
    EVENT_TYPE,
    ITEM_ID,
    ITEM_IDX,
    RATING,
    RECEIVED_AT,
    TS,
    USER_ID,
    USER_IDX,
)

SPEC_FORMS = " | ".join(
    [
        *MOVIELENS_NAMES,
        "recbole:<path>",
        "csv:<path>",
        "parquet:<path>",
        "synth:<dir>",
        "events:<dir>",
        "seqlines:<file>",
    ]
)


def _side_table(path: Path | None, key: str) -> tuple[pl.DataFrame | None, list[Path]]:
    """An items/users table for string ids; a prepared dataset's stale dense index is dropped."""
    if path is None:
        return None, []
    table, files = read_side_table(path, [key], key, pl.String)
    return table.drop(ITEM_IDX, USER_IDX, strict=False), files


def load_event_log(root: Path, items: Path | None = None, users: Path | None = None) -> RawLog:
    """The service's event log as a RawLog: user_id, item_id (strings), ts, device.

    Only interactions (view/click/purchase/rating; no impressions), in arrival order; users
    erased before an event arrived are left out. `device` comes from the logged request
    context (null where absent).
    """
    sealed, opened = segment_files(root)
    table = read_events(root)
    if table.num_rows == 0:
        raise DataError(f"the event log {root} holds no events; nothing to prepare")
    interactions = (
        pl.from_arrow(table)
        .lazy()
        .filter(pl.col(EVENT_TYPE).is_in(INTERACTION_TYPES))
        .sort(RECEIVED_AT, maintain_order=True)
        .select(
            USER_ID,
            ITEM_ID,
            TS,
            pl.col(CONTEXT).str.json_path_match(f"$.{DEVICE}").alias(DEVICE),
        )
    )
    items_df, item_files = _side_table(items, ITEM_ID)
    users_df, user_files = _side_table(users, USER_ID)
    return RawLog(
        interactions=interactions,
        items=items_df,
        users=users_df,
        source=f"event log {root} ({len(sealed)} sealed + {len(opened)} open segment(s))",
        files=[*sealed, *opened, *item_files, *user_files],
    )


def _atomic_fields(columns: ColumnMapping | None) -> dict[str, str]:
    """A ColumnMapping (raw names) -> RecBole field mapping {recbole_field: ours}."""
    if columns is None:
        return dict(DEFAULT_FIELDS)
    fields = {columns.user: USER_ID, columns.item: ITEM_ID, columns.timestamp: TS}
    if columns.rating:
        fields[columns.rating] = RATING
    return fields


def _split(spec: str) -> tuple[str, str]:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest.strip():
        raise DataError(f"unknown source {spec!r}; use one of: {SPEC_FORMS}")
    return kind.strip().lower(), rest.strip()


def open_source(
    spec: str,
    columns: ColumnMapping | None = None,
    items: Path | None = None,
    users: Path | None = None,
    min_rating: float | None = None,
    cache: Path | None = None,
    offline_fallback: bool = True,
) -> RawLog:
    """Open the raw log named by `spec` (see the module docstring) as a RawLog.

    `columns`, `items` and `users` describe csv:/parquet: sources (`columns` also renames
    RecBole fields); `min_rating` keeps ratings >= it, lazily; `cache` and
    `offline_fallback` apply to the MovieLens downloads.
    """
    spec = spec.strip()
    if spec in MOVIELENS_NAMES:
        if columns is not None or items is not None or users is not None:
            raise DataError(
                f"{spec} has a fixed layout; columns/items/users apply only to csv:, parquet: "
                "and recbole: sources"
            )
        return load_movielens(
            spec, cache=cache, min_rating=min_rating, offline_fallback=offline_fallback
        )
    kind, where = _split(spec)
    if kind == "recbole":
        raw = load_atomic(where, columns=_atomic_fields(columns))
        if min_rating is not None:
            if RATING not in raw.interactions.collect_schema().names():
                raise DataError(f"{spec}: min_rating needs a rating field in the .inter file")
            raw.interactions = raw.interactions.filter(pl.col(RATING) >= min_rating)
        return raw
    if kind in ("csv", "parquet"):
        if columns is None:
            raise DataError(
                f"{spec}: a {kind} source needs a column mapping: say which columns hold "
                "the user, item and timestamp (ColumnMapping / --user-col ...)"
            )
        found = file_format(resolve_files(where))
        if found != kind:
            raise DataError(f"{spec}: the files are {found}, not {kind}; write {found}:{where}")
        return load_tabular(where, columns, items=items, users=users, min_rating=min_rating)
    if kind == "synth":
        return load_synth_log(Path(where), columns, items, users, min_rating)
    if kind == "events":
        if columns is not None or min_rating is not None:
            raise DataError(
                f"{spec}: the event log has a fixed layout and no rating values; drop "
                "columns/min_rating (items/users tables are allowed)"
            )
        return load_event_log(Path(where), items=items, users=users)
    if kind == "seqlines":
        if columns is not None or items is not None or users is not None or min_rating is not None:
            raise DataError(
                f"{spec}: a sequence-per-line file has a fixed layout (`user item item ...`) and "
                "no ratings; drop columns/items/users/min_rating"
            )
        return load_seqlines(Path(where))
    raise DataError(f"unknown source {spec!r}; use one of: {SPEC_FORMS}")
