"""`recstack data prepare`: raw log -> prepared dataset dir (docs/architecture.md §3).

Output (written to a temp dir next to `out`, renamed into place only when complete):
  interactions.parquet  user_idx, item_idx, ts, [rating], [context...], split_loo, split_temporal
                        sorted by (user_idx, ts, raw row order)
  items.parquet         item_idx (1..n_items), item_id, catalogue features  (the item vocab)
  users.parquet         user_idx (0..n_users-1), user_id, attributes        (the user vocab)
  quality_report.json   rows read, rows dropped per reason, flagged rows
  manifest.json         sha256 per file, counts, config, source, code version
"""

import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from rich.text import Text

from recstack.data_profile import profile_interactions
from recstack.dataset_dir import DATASET_KIND
from recstack.datasets.quality import QualityConfig, QualityLog, clean, k_core_pass
from recstack.datasets.sources import TS_ORDINAL, TS_SECONDS, RawLog
from recstack.datasets.sources.resolve import open_source
from recstack.datasets.sources.tabular import (
    ColumnMapping,
    collect_or_explain,
    explain_read_errors,
)
from recstack.datasets.splits import check_fractions, global_temporal, leave_one_out
from recstack.errors import DataError
from recstack.manifest import file_sha256, write_manifest
from recstack.progress import StepLog, console
from recstack.schema import (
    INTERACTIONS_FILE,
    ITEM_ID,
    ITEM_IDX,
    ITEMS_FILE,
    PAD_IDX,
    QUALITY_FILE,
    ROW,
    SPLIT_LOO,
    SPLIT_NAMES,
    SPLIT_TEMPORAL,
    TS,
    USER_ID,
    USER_IDX,
    USERS_FILE,
)


@dataclass
class SplitConfig:
    """Split settings.

    Args:
        temporal_valid_fraction: share of events (by time) in the global temporal split's
            validation period.
        temporal_test_fraction: share of the latest events in its test period.
    """

    temporal_valid_fraction: float = 0.1
    temporal_test_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_fractions(self.temporal_valid_fraction, self.temporal_test_fraction)


def _compact_context(frame: pl.DataFrame) -> pl.DataFrame:
    """String context columns -> Categorical (4 bytes a row instead of a string view)."""
    strings = [c for c, t in frame.schema.items() if t == pl.String and c not in (USER_ID, ITEM_ID)]
    return frame.with_columns(pl.col(strings).cast(pl.Categorical)) if strings else frame


def _range_scannable(raw: RawLog, n_ranges: int, staging: Path, step: StepLog) -> pl.LazyFrame:
    """The raw log with `row`, as a LazyFrame whose per-user-range filters are cheap.

    Parquet sources filter inside the scan (the row index comes from the scan, so the
    predicate is pushed down). Anything else (CSV, a zip read into memory) is staged once to a
    temporary Parquet file when there is more than one range, instead of being parsed again
    for every range.
    """
    lazy = raw.interactions
    if ROW not in lazy.collect_schema().names():
        lazy = lazy.with_row_index(ROW)
    if n_ranges == 1 or all(f.suffix == ".parquet" for f in raw.files):
        return lazy
    with step.step("stage raw log to Parquet"), explain_read_errors(raw.files):
        lazy.sink_parquet(staging, compression="lz4")
    return pl.scan_parquet(staging)


def vocab_hash(ids: pl.Series) -> str:
    """sha256 of the ids in index order: two stages agree on a vocab iff the hashes match."""
    joined = ids.cast(pl.String).str.join("\n").item()
    return hashlib.sha256(joined.encode()).hexdigest()


def _attach(vocab: pl.DataFrame, table: pl.DataFrame | None, key: str) -> pl.DataFrame:
    if table is None:
        return vocab
    table = table.unique(key, keep="first", maintain_order=True)
    return vocab.join(table, on=key, how="left", maintain_order="left")


def _user_ranges(raw: RawLog, rows_per_part: int, log: QualityLog) -> list[tuple]:
    """Contiguous ranges of sorted user ids holding about `rows_per_part` raw rows each.

    One pass over the raw log (user_id only). Rows with a null user id are counted here.
    """
    counts = collect_or_explain(raw.interactions.group_by(USER_ID).len(), raw.files)
    log.rows_read = int(counts["len"].sum())
    if log.rows_read == 0:
        raise DataError(f"the raw log from {raw.source} has no rows; check the input file")
    log.count_dropped("null_ids", int(counts.filter(pl.col(USER_ID).is_null())["len"].sum()))
    counts = counts.drop_nulls(USER_ID).sort(USER_ID)
    rows_before = counts["len"].cum_sum() - counts["len"]
    ranges = (
        counts.with_columns((rows_before // rows_per_part).alias("part"))
        .group_by("part", maintain_order=True)
        .agg(pl.col(USER_ID).first().alias("first"), pl.col(USER_ID).last().alias("last"))
    )
    return list(zip(ranges["first"], ranges["last"], strict=True))


def ts_quantiles(parts: list[Path], qs: list[float]) -> list[int]:
    """Exact "higher" quantiles of ts over all partitions, without loading the ts column.

    Same values as polars' `quantile(q, "higher")` (the element at 0-based rank
    ceil(q * (n - 1)) in sorted order), in two bounded passes: a histogram of 65k buckets, then
    the values of the one bucket holding each rank.
    """
    scan = pl.scan_parquet(parts).select(TS)
    lo, hi, n = (
        scan.select(pl.col(TS).min().alias("lo"), pl.col(TS).max().alias("hi"), pl.len())
        .collect()
        .row(0)
    )
    width = (hi - lo) // 2**16 + 1
    bucket = ((pl.col(TS) - lo) // width).alias("bucket")
    hist = scan.group_by(bucket).len().sort("bucket").collect()
    ends = hist["len"].cum_sum().to_numpy()
    values = []
    for q in qs:
        rank = math.ceil(q * (n - 1))
        i = int(np.searchsorted(ends, rank, side="right"))
        in_bucket = scan.filter(bucket == hist["bucket"][i]).collect()[TS].sort()
        values.append(int(in_bucket[rank - (int(ends[i]) - int(hist["len"][i]))]))
    return values


def temporal_cuts(parts: list[Path], splits: SplitConfig) -> tuple[int, int]:
    """(valid_from, test_from): the temporal split's cut timestamps over all partitions."""
    test_q = 1 - splits.temporal_test_fraction
    valid_from, test_from = ts_quantiles(parts, [test_q - splits.temporal_valid_fraction, test_q])
    return valid_from, test_from


class SplitWriter:
    """Writes interactions.parquet from frames sorted by (user_idx, ts, raw order), each holding
    whole users: adds both split columns (docs/architecture.md §5) and counts rows per split.

    Without cuts (ordinal ts, no times) split_temporal is null on every row and not counted."""

    def __init__(self, path: Path, valid_from: int | None, test_from: int | None):
        self.path, self.valid_from, self.test_from = path, valid_from, test_from
        names = (SPLIT_LOO, SPLIT_TEMPORAL) if valid_from is not None else (SPLIT_LOO,)
        self.counts = {name: dict.fromkeys(SPLIT_NAMES.values(), 0) for name in names}
        self._writer: pq.ParquetWriter | None = None

    def write(self, frame: pl.DataFrame) -> None:
        temporal = (
            global_temporal(frame[TS], self.valid_from, self.test_from)
            if self.valid_from is not None
            else pl.lit(None, pl.Int8).alias(SPLIT_TEMPORAL)
        )
        frame = frame.with_columns(leave_one_out(frame), temporal)
        for name in self.counts:
            for code, n in frame[name].value_counts().iter_rows():
                self.counts[name][SPLIT_NAMES[code]] += n
        table = frame.to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._writer.write_table(table, row_group_size=1 << 20)

    def close(self) -> dict:
        """The manifest's `splits` block."""
        if self._writer is not None:
            self._writer.close()
        return {
            "counts": self.counts,
            "temporal_valid_from_ts": self.valid_from,
            "temporal_test_from_ts": self.test_from,
        }


def vocab_block(items: pl.DataFrame, users: pl.DataFrame) -> dict:
    """The manifest's `vocab` block: per side, its file and the hash of its ids in index order."""
    return {
        "items": {"file": ITEMS_FILE, "sha256": vocab_hash(items.sort(ITEM_IDX)[ITEM_ID])},
        "users": {"file": USERS_FILE, "sha256": vocab_hash(users.sort(USER_IDX)[USER_ID])},
    }


def _clean_partitions(
    raw, quality, ranges, parts_dir, log: QualityLog, step: StepLog
) -> list[Path]:
    """Per user range: read its rows (one filtered scan), clean, write a cleaned partition."""
    catalogue = raw.items[ITEM_ID] if raw.items is not None else None
    parts = []
    staging = parts_dir / "staged.parquet"
    source = _range_scannable(raw, len(ranges), staging, step)
    with step.step(f"clean {len(ranges)} user-range partition(s)", total=len(ranges)) as advance:
        for i, (first, last) in enumerate(ranges):
            in_range = pl.col(USER_ID).is_between(pl.lit(first), pl.lit(last), closed="both")
            frame = _compact_context(collect_or_explain(source.filter(in_range), raw.files))
            frame = clean(frame, quality, log, catalogue)
            parts.append(parts_dir / f"part-{i:05d}.parquet")
            frame.write_parquet(parts[-1])
            advance()
    staging.unlink(missing_ok=True)
    if quality.k_core is not None:
        with step.step(f"{quality.k_core}-core filter"):
            while True:
                item_counts = pl.scan_parquet(parts).group_by(ITEM_ID).len().collect()
                dropped = 0
                for part in parts:
                    frame = pl.read_parquet(part)
                    kept = k_core_pass(frame, item_counts, quality.k_core)
                    if kept.height < frame.height:
                        dropped += frame.height - kept.height
                        kept.write_parquet(part)
                log.count_dropped("k_core", dropped)
                if dropped == 0:
                    break
    return parts


def build_dataset(
    raw: RawLog,
    quality: QualityConfig,
    splits: SplitConfig,
    tmp: Path,
    step: StepLog,
    rows_per_part: int,
) -> dict:
    """Clean, index, sort and split a raw log into `tmp`, one user range at a time.

    Memory stays bounded by one partition (about `rows_per_part` rows) plus the vocabularies:
    the raw log is read once for user counts, then once per user range with a filtered scan.
    Partitions are contiguous ranges of sorted user ids, so writing them in order gives a
    file sorted by user_idx.
    """
    log = QualityLog()
    ordinal = raw.ts_unit == TS_ORDINAL
    if ordinal and (quality.max_events_per_second is not None or quality.min_rating is not None):
        raise DataError(
            f"{raw.source}: has no timestamps and no ratings, so max_events_per_second and "
            "min_rating do not apply; drop them"
        )
    with step.step("count users"):
        ranges = _user_ranges(raw, rows_per_part, log)
    parts_dir = tmp / "_partitions"
    parts_dir.mkdir()
    parts = _clean_partitions(raw, quality, ranges, parts_dir, log, step)
    report = log.report()
    if report["rows_kept"] == 0:
        raise DataError(
            f"no interactions left after cleaning ({report['dropped']}); relax the filters"
        )

    with step.step("vocab and temporal cuts"):
        kept = pl.scan_parquet(parts)
        users = kept.select(pl.col(USER_ID).unique().sort()).collect()
        items = kept.select(pl.col(ITEM_ID).unique().sort()).collect()
        users = users.select(pl.int_range(pl.len(), dtype=pl.Int32).alias(USER_IDX), USER_ID)
        items = items.select(
            (pl.int_range(pl.len(), dtype=pl.Int32) + PAD_IDX + 1).alias(ITEM_IDX), ITEM_ID
        )
        # ordinal ts (no times): no temporal split (docs/architecture.md §3)
        valid_from, test_from = (None, None) if ordinal else temporal_cuts(parts, splits)

    with step.step("index, sort, split, write interactions", total=len(parts)) as advance:
        writer = SplitWriter(tmp / INTERACTIONS_FILE, valid_from, test_from)
        for part in parts:
            frame = (
                pl.read_parquet(part)
                .join(users, on=USER_ID, how="left")
                .join(items, on=ITEM_ID, how="left")
                .drop(USER_ID, ITEM_ID)
                .sort([USER_IDX, TS, ROW])
                .drop(ROW)
            )
            leading = [USER_IDX, ITEM_IDX, TS]
            writer.write(frame.select(leading + [c for c in frame.columns if c not in leading]))
            part.unlink()
            pa.default_memory_pool().release_unused()
            advance()
        split_block = writer.close()
        parts_dir.rmdir()
        _attach(items, raw.items, ITEM_ID).write_parquet(tmp / ITEMS_FILE)
        _attach(users, raw.users, USER_ID).write_parquet(tmp / USERS_FILE)

    if raw.items is not None:
        report["catalogue_items_without_events"] = int(
            (~raw.items[ITEM_ID].is_in(items[ITEM_ID].implode())).sum()
        )
    report["partitions"] = len(parts)
    report["ts_unit"] = raw.ts_unit
    return {
        "report": report,
        "counts": {
            "interactions": report["rows_kept"],
            "users": users.height,
            "items": items.height,
        },
        "vocab": vocab_block(items, users),
        "splits": split_block,
    }


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DataError(
            f"{out} already exists and is not empty; pass --overwrite true or choose another --out"
        )


def publish_dataset(
    out: Path, overwrite: bool, step: StepLog, build: Callable[[Path], dict], **fields
) -> tuple[dict, dict]:
    """Write a dataset dir whole or not at all (docs/architecture.md §2, §3).

    `build(tmp)` writes interactions.parquet, items.parquet and users.parquet into a temp dir
    beside `out` and returns {"report", "counts", "vocab", "splits"}; this adds the quality
    report and the manifest (with `fields`: source, raw_files, config, ...) and renames the
    dir into place. Returns (manifest, report).
    """
    out = Path(out)
    check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        built = build(tmp)
        with step.step("quality report + manifest"):
            (tmp / QUALITY_FILE).write_text(json.dumps(built["report"], indent=2) + "\n")
            schema = pq.read_schema(tmp / INTERACTIONS_FILE)
            # the reference `recstack monitor` compares traffic with (docs/architecture.md §3)
            ts_seconds = (fields.get("time") or {}).get("ts_unit", TS_SECONDS) == TS_SECONDS
            profile = profile_interactions(
                tmp / INTERACTIONS_FILE, built["counts"]["items"], ts_seconds
            )
            manifest = write_manifest(
                tmp,
                DATASET_KIND,
                **fields,
                counts=built["counts"],
                vocab=built["vocab"],
                splits=built["splits"],
                interaction_columns=schema.names,
                profile=profile.model_dump(),
                # timings vary run to run, so they stay out of the hashed files: the same source
                # prepared twice has the same content hash (docs/architecture.md §2)
                step_seconds=step.seconds,
            )
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, built["report"]


def time_block(ts_unit: str) -> dict:
    """The manifest's `time` block: what `ts` means in this dataset (docs/architecture.md §3)."""
    if ts_unit == TS_SECONDS:
        return {"ts_unit": TS_SECONDS}
    return {
        "ts_unit": TS_ORDINAL,
        "note": (
            "the source has no timestamps: ts is each interaction's 0-based position in its "
            "user's sequence, so the order is exact (leave-one-out holds out each user's last "
            "item) but ts is not seconds. There is no temporal split (split_temporal is null), "
            "the profile's per-day user activity counts a whole sequence as one day, and "
            "hour/weekday context features read from ts are constant (no signal)"
        ),
    }


def write_dataset(
    out: Path,
    raw: RawLog,
    quality: QualityConfig,
    splits: SplitConfig,
    config: dict,
    overwrite: bool,
    step: StepLog,
    rows_per_part: int,
) -> tuple[dict, dict]:
    """Build the dataset from `raw` in a temp dir beside `out`, then rename it into place."""
    return publish_dataset(
        out,
        overwrite,
        step,
        lambda tmp: build_dataset(raw, quality, splits, tmp, step, rows_per_part),
        source=raw.source,
        raw_files=[str(p) for p in raw.files],
        raw_sha256={str(p): file_sha256(p) for p in raw.files if Path(p).is_file()},
        config=config,
        time=time_block(raw.ts_unit),
    )


def _summary_table(manifest: dict, report: dict, seconds: float):
    from rich.table import Table

    table = Table(title="recstack data prepare", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right", no_wrap=True)
    table.add_row("rows read", f"{report['rows_read']:,}")
    for reason, n in report["dropped"].items():
        table.add_row(f"  dropped: {reason.replace('_', ' ')}", f"{n:,}")
    for reason, n in report["flagged"].items():
        table.add_row(f"  flagged (kept): {reason.replace('_', ' ')}", f"{n:,}")
    counts = manifest["counts"]
    table.add_row("interactions", f"{counts['interactions']:,}")
    table.add_row("users / items", f"{counts['users']:,} / {counts['items']:,}")
    density = counts["interactions"] / (counts["users"] * counts["items"])
    table.add_row("density", f"{density:.4%}")
    if manifest.get("time", {}).get("ts_unit") == TS_ORDINAL:
        table.add_row("ts", "sequence positions, not times")
    for name, split in manifest["splits"]["counts"].items():
        table.add_row(f"{name} ({' / '.join(split)})", " / ".join(f"{v:,}" for v in split.values()))
    table.add_row("seconds", f"{seconds:.1f}")
    return table


def prepare(
    source: str,
    out: Path,
    columns: ColumnMapping | None = None,
    items: Path | None = None,
    users: Path | None = None,
    min_rating: float | None = None,
    k_core: int | None = None,
    max_events_per_second: float | None = None,
    non_monotone: Literal["sort", "drop"] = "sort",
    require_catalogue: bool = True,
    temporal_valid_fraction: float = 0.1,
    temporal_test_fraction: float = 0.1,
    overwrite: bool = False,
    cache: Path | None = None,
    offline_fallback: bool = True,
    rows_per_part: int = 500_000,
    quiet: bool = False,
) -> dict:
    """Prepare a raw interaction log into a dataset dir (Parquet, vocab, splits, reports).

    Args:
        source: ml-100k | ml-1m | ml-20m | ml-25m | recbole:PATH | csv:PATH | parquet:PATH |
            synth:DIR | events:DIR (the service's event log, the feedback loop) |
            seqlines:FILE (one user per line, `user item item ...` in time order, integer ids,
            no timestamps: ts is the position, and there is no temporal split)
        out: dataset directory to write (written to a temp dir, then renamed into place).
        columns: column mapping for csv:/parquet: sources (user, item, timestamp, rating, context).
        items: optional item catalogue file (csv/parquet) for csv:/parquet:/synth:/events:
            sources (a prepared dataset's items.parquet works for events:).
        users: optional user attribute file (csv/parquet) for the same sources.
        min_rating: keep only ratings >= this (explicit -> implicit). Default: keep all.
        k_core: iteratively keep users and items with >= k interactions. Default: off.
        max_events_per_second: drop users above this event rate (bots). Default: off.
        non_monotone: "sort" keeps rows whose timestamp goes back in file order (and sorts by
            time); "drop" removes them.
        require_catalogue: drop interactions whose item is not in the catalogue.
        temporal_valid_fraction: share of events in the temporal split's validation period.
        temporal_test_fraction: share of the latest events in the temporal split's test period.
        overwrite: replace an existing non-empty `out`.
        cache: download cache dir (default $RECSTACK_CACHE or ~/.cache/recstack).
        offline_fallback: for ml-100k, use the recbole wheel from PyPI when grouplens is unreachable.
        rows_per_part: raw rows per user-range partition; peak memory scales with it.
        quiet: no progress output.
    """
    started = time.perf_counter()
    log = StepLog(quiet=quiet)
    config = {k: v for k, v in locals().items() if k not in ("log", "started")}
    quality = QualityConfig(
        non_monotone=non_monotone,
        max_events_per_second=max_events_per_second,
        require_catalogue=require_catalogue,
        min_rating=min_rating,
        k_core=k_core,
    )
    splits = SplitConfig(temporal_valid_fraction, temporal_test_fraction)
    if rows_per_part < 1:
        raise DataError(f"rows_per_part must be >= 1, got {rows_per_part}")
    with log.step(f"open source {source}", live=False):  # downloads draw their own bar
        raw = open_source(
            source,
            columns=columns,
            items=items,
            users=users,
            cache=cache,
            offline_fallback=offline_fallback,
        )
    config["columns"] = asdict(columns) if columns is not None else None
    manifest, report = write_dataset(
        Path(out), raw, quality, splits, config, overwrite, log, rows_per_part
    )
    if not quiet:
        console.print("source:", Text(manifest["source"]))
        console.print(_summary_table(manifest, report, time.perf_counter() - started))
        console.print("dataset written to", Text(str(out), style="bold"))
    return manifest
