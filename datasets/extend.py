"""`recstack data extend`: a new dataset version = a base dataset + the service's event log
(docs/architecture.md §2, §3, §9).

    recstack data extend --base data/v1 --events runs/serve/events --out data/v2 \
        [--since auto|<unix s>] [--feedback view=1,click=1,purchase=1,rating>=4]

- New events: the log's events after `since` (auto: the base's last interaction ts, its
  cut-off) that `--feedback` counts, without erased users and without events the base already
  holds; `datasets/log_events.py` says how each row is filtered and counted.
- Erasure reaches the base too: users with a tombstone in the log lose their base rows and
  their users.parquet row (also an id active again after its erasure: its later events come
  back as a new user).
- Vocab kept (§4): every base item keeps its item_idx, so item embeddings stay valid for warm
  starts; new items get item_idx after the largest, in first-appearance order, with catalogue
  rows holding only item_id. Users keep their order and user_idx; user_idx stays dense
  (0..n_users-1, §3), so after an erasure the later users move down, as `recstack data forget`
  does (user_idx never leaves training, §4). New users are appended the same way as items.
  Integer ids stay integers while every new id is one; otherwise the ids become strings.
- Splits are recomputed over all interactions exactly as prepare does, and the dir is written
  whole or not at all through prepare's code path. The manifest adds `parents`: the base
  (path, content hash), the event log (path, segments read, a hash of the events added),
  `since`, `feedback` and the counts.
- Nothing new (no event added, no base user erased): a message, exit 0, nothing written. An
  `--out` already holding this exact version (same parents) is left as it is, so a rerun does
  nothing.
Memory: the base's interactions and the new events are held at once (polars).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from recstack.dataset_dir import DATASET_KIND, PARENTS, PreparedDataset, load_dataset
from recstack.datasets.feedback import parse_feedback
from recstack.datasets.log_events import LogEvents, read_log_events
from recstack.datasets.prepare import (
    SplitConfig,
    SplitWriter,
    check_out,
    publish_dataset,
    temporal_cuts,
    time_block,
    vocab_block,
)
from recstack.datasets.sources import TS_ORDINAL, TS_SECONDS
from recstack.errors import DataError
from recstack.event_log_format import check_log_dir, read_tombstones, tombstoned_ids
from recstack.manifest import CONTENT_HASH, read_manifest
from recstack.progress import StepLog
from recstack.schema import (
    INTERACTIONS_FILE,
    ITEM_ID,
    ITEM_IDX,
    ITEMS_FILE,
    ROW,
    SPLIT_COLUMNS,
    TS,
    USER_ID,
    USER_IDX,
    USERS_FILE,
)


@dataclass
class Vocab:
    table: pl.DataFrame  # the vocab file's rows: idx, id, features
    added: int  # new ids appended


@dataclass
class Combined:
    users: Vocab
    items: Vocab
    interactions: pl.DataFrame  # no split columns yet; sorted by (user_idx, ts, raw order)
    base_rows_erased: int


def _append_ids(vocab: pl.DataFrame, key: str, idx: str, seen: pl.Series) -> Vocab:
    """`vocab` plus the ids of `seen` (strings, first-appearance order) it lacks, numbered
    after its largest index; other columns of the new rows are null."""
    seen = seen.unique(maintain_order=True)
    fresh = seen.filter(~seen.is_in(vocab[key].cast(pl.String).implode()))
    ids = fresh
    if vocab[key].dtype != pl.String:
        try:
            ids = fresh.cast(vocab[key].dtype)
        except pl.exceptions.InvalidOperationError:
            ids = None
        if ids is None or not ids.cast(pl.String).equals(fresh):  # "abc", "007": strings
            vocab, ids = vocab.with_columns(pl.col(key).cast(pl.String)), fresh
    start = int(vocab[idx].max()) + 1 if vocab.height else 0
    rows = pl.DataFrame(
        {idx: pl.int_range(start, start + len(ids), dtype=pl.Int32, eager=True), key: ids}
    )
    return Vocab(pl.concat([vocab, rows], how="diagonal_relaxed"), len(ids))


def _erased_users(users: pl.DataFrame, events: Path) -> pl.Series:
    """Boolean mask of the base users with a tombstone in the log (any erasure time)."""
    ids = users[USER_ID].cast(pl.String)
    return ids.is_in(tombstoned_ids(ids, read_tombstones(events)))


def _keys(frame: pl.DataFrame, vocab: pl.DataFrame, key: str, idx: str) -> pl.DataFrame:
    return frame.join(vocab.select(idx, pl.col(key).cast(pl.String).alias(key)), on=idx, how="left")


def _combine(
    data: PreparedDataset, users: pl.DataFrame, erased: pl.Series, new: LogEvents
) -> Combined:
    """The new version's users, items and interactions (unsplit, sorted by user, ts, row).

    `users`: the base users in user_idx order; `erased`: the mask of those erased.
    """
    kept = users.filter(~erased)
    dense = pl.int_range(kept.height, dtype=pl.Int32, eager=True)
    base = (
        data.interactions.drop(SPLIT_COLUMNS)
        .with_row_index(ROW)
        .filter(pl.col(USER_IDX).is_in(kept[USER_IDX].implode()))
        .with_columns(pl.col(USER_IDX).replace_strict(kept[USER_IDX], dense))
    )
    users_out = _append_ids(
        kept.with_columns(dense.alias(USER_IDX)), USER_ID, USER_IDX, new.frame[USER_ID]
    )
    items_out = _append_ids(data.items.sort(ITEM_IDX), ITEM_ID, ITEM_IDX, new.frame[ITEM_ID])
    added = new.frame.with_row_index(ROW, offset=data.interactions.height)
    for vocab, key, idx in ((users_out, USER_ID, USER_IDX), (items_out, ITEM_ID, ITEM_IDX)):
        index = vocab.table.select(idx, pl.col(key).cast(pl.String))
        added = added.join(index, on=key, how="left", maintain_order="left").drop(key)
    columns = [*data.interactions.drop(SPLIT_COLUMNS).columns, ROW]
    interactions = (
        pl.concat([base.select(columns), added.select(columns)]).sort([USER_IDX, TS, ROW]).drop(ROW)
    )
    return Combined(users_out, items_out, interactions, data.interactions.height - base.height)


def _build(
    combined: Combined, splits: SplitConfig, report: dict, step: StepLog
) -> Callable[[Path], dict]:
    """prepare's `build` step for `publish_dataset`: split, write the three Parquet files."""

    def build(tmp: Path) -> dict:
        with step.step("split and write the new version"):
            part = tmp / "_unsplit.parquet"
            combined.interactions.write_parquet(part)
            valid_from, test_from = temporal_cuts([part], splits)
            writer = SplitWriter(tmp / INTERACTIONS_FILE, valid_from, test_from)
            writer.write(combined.interactions)
            split_block = writer.close()
            part.unlink()
            items, users = combined.items.table, combined.users.table
            items.write_parquet(tmp / ITEMS_FILE)
            users.write_parquet(tmp / USERS_FILE)
        return {
            "report": report,
            "counts": {
                "interactions": combined.interactions.height,
                "users": users.height,
                "items": items.height,
            },
            "vocab": vocab_block(items, users),
            "splits": split_block,
        }

    return build


def _identity(parents: dict) -> tuple:
    """What makes two versions the same: base, since, feedback, events added, base erasures."""
    return (
        parents["base"][CONTENT_HASH],
        parents["since"],
        parents["feedback"],
        parents["event_log"]["events_sha256"],
        parents["counts"]["base_users_erased"],
    )


def _existing_parents(out: Path) -> dict | None:
    if not (out / "manifest.json").is_file():
        return None
    try:
        return read_manifest(out, DATASET_KIND, verify=False).get(PARENTS)
    except DataError:
        return None


def extend(
    base: Path,
    events: Path,
    out: Path,
    since: Literal["auto"] | int = "auto",
    feedback: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict | None:
    """Make a new dataset version: a base dataset plus the event log since its cut-off.

    The base's item and user vocab is kept (new ids appended) and the splits are recomputed.

    Args:
        base: prepared dataset dir (`recstack data prepare` or an earlier `data extend`).
        events: the service's event log dir (tombstones included).
        out: dataset dir to write (a temp dir beside it, renamed into place when complete).
        since: add events with ts after this (unix seconds); auto: the base's last
            interaction ts.
        feedback: which interaction types count, e.g. view=1,click=1,purchase=1,rating>=4
            (TYPE=0 or leaving a type out: it does not count). Default: every interaction
            type, ratings >= the base's min_rating when it has one.
        overwrite: replace an existing non-empty `out`.
        quiet: no progress output.

    Returns the new manifest, or None when nothing was written (nothing new, or `out` already
    holds this version).
    """
    base, events, out = Path(base), Path(events), Path(out)
    step = StepLog(quiet=quiet)
    if out.resolve() == base.resolve():
        raise DataError(f"--out {out} is the base dataset; write the new version elsewhere")
    if since != "auto" and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
        raise DataError(f"--since must be auto or unix seconds >= 0, got {since!r}")
    check_log_dir(events)
    with step.step("read the base dataset"):
        data = load_dataset(base)
    if data.manifest.get("time", {}).get("ts_unit") == TS_ORDINAL:
        raise DataError(
            f"{base} has ordinal times (sequence positions, e.g. a seqlines: source), and the "
            "event log has seconds: extend a base prepared from a source with timestamps"
        )
    config = data.manifest.get("config") or {}
    spec = parse_feedback(feedback, config.get("min_rating"))
    cutoff = int(data.interactions[TS].max()) if data.interactions.height else -1
    since_ts = cutoff if since == "auto" else since
    users = data.users.sort(USER_IDX)
    erased = _erased_users(users, events)
    keys = _keys(data.interactions.select(USER_IDX, ITEM_IDX, TS), data.users, USER_ID, USER_IDX)
    keys = _keys(keys, data.items, ITEM_ID, ITEM_IDX).select(USER_ID, ITEM_ID, TS).unique()
    context = {
        name: dtype
        for name, dtype in data.interactions.schema.items()
        if name not in (USER_IDX, ITEM_IDX, TS, *SPLIT_COLUMNS)
    }
    with step.step("read the event log"):
        new = read_log_events(events, spec, since_ts, context, keys)
    report = new.log.report()
    if new.frame.height == 0 and not erased.any():
        _say(
            quiet,
            f"nothing new since ts {since_ts} in {events} (dropped: {_reasons(report)}); "
            f"{out} not written",
        )
        return None
    combined = _combine(data, users, erased, new)
    parents = {
        "base": {"path": str(base), CONTENT_HASH: data.manifest[CONTENT_HASH]},
        "event_log": {
            "path": str(events),
            "segments": new.segments,
            "events_sha256": new.sha256(),
        },
        "since": since_ts,
        "feedback": spec.spec(),
        "counts": {
            "events_read": report["rows_read"],
            "events_added": report["rows_kept"],
            "events_dropped": report["dropped"],
            "base_users_erased": int(erased.sum()),
            "base_rows_erased": combined.base_rows_erased,
            "new_items": combined.items.added,
            "new_users": combined.users.added,
        },
    }
    existing = _existing_parents(out)
    if existing is not None and _identity(existing) == _identity(parents):
        _say(quiet, f"{out} already holds this version (same base, events and options)")
        return None
    check_out(out, overwrite)
    splits = SplitConfig(
        config.get("temporal_valid_fraction", 0.1), config.get("temporal_test_fraction", 0.1)
    )
    report = {**report, "base_rows_erased": combined.base_rows_erased}
    manifest, _ = publish_dataset(
        out,
        overwrite,
        step,
        _build(combined, splits, report, step),
        source=f"dataset {base} extended with the event log {events}",
        time=time_block(TS_SECONDS),
        raw_files=[str(events / s["file"]) for s in new.segments],
        config={
            "base": str(base),
            "events": str(events),
            "since": since,
            "feedback": feedback,
            "min_rating": spec.min_rating,
            "temporal_valid_fraction": splits.temporal_valid_fraction,
            "temporal_test_fraction": splits.temporal_test_fraction,
        },
        parents=parents,
    )
    counts = parents["counts"]
    _say(
        quiet,
        f"{out}: {counts['events_added']:,} event(s) added to {base} "
        f"({counts['new_users']:,} new user(s), {counts['new_items']:,} new item(s); "
        f"base users erased: {counts['base_users_erased']:,}; dropped: {_reasons(report)})",
    )
    return manifest


def _reasons(report: dict) -> str:
    return (
        ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in report["dropped"].items() if v)
        or "none"
    )


def _say(quiet: bool, line: str) -> None:
    if not quiet:
        print(line)  # the outcome, on stdout (progress goes to stderr)
