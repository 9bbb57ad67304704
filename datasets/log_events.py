"""The events a new dataset version adds: the service's event log, filtered and counted
(docs/architecture.md §9; used by `recstack data extend`).

Read through the log's contract (`recstack/event_log_format.py`), in arrival order, like the
`events:` source. Every row read is counted once, under the first filter that drops it:
    erased_users           its user has a tombstone at or after its received_at
    not_feedback           an impression, or a type `--feedback` does not count
    below_min_rating       a rating event under the feedback threshold (or without a value)
    before_since           ts <= since (the base's cut-off)
    impossible_timestamps, exact_duplicates   prepare's cleaning (`datasets/quality.py`)
    already_in_base        the same (user_id, item_id, ts) is a base interaction
Consent: the service drops the events of users whose tracking consent is off before they reach
the log (`POST /v1/events`, tested in tests/datasets/test_extend.py); the log records no
consent, so no filter here can apply it again. While the online store is unreachable the
service cannot read consent and logs under its default, tracking on (docs/architecture.md §8).
Context columns: each context column of the base interactions (e.g. `device`, `rating`) takes
the value of the same key in the event's logged context, cast to the base's type (null when
absent or of another type); other context keys are not kept.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from recstack.datasets.feedback import RATING_TYPE, Feedback
from recstack.datasets.quality import QualityConfig, QualityLog, clean
from recstack.errors import DataError
from recstack.event_log_format import erased_rows, read_segments, read_tombstones
from recstack.schema import CONTEXT, EVENT_TYPE, ITEM_ID, RATING, RECEIVED_AT, ROW, TS, USER_ID


@dataclass
class LogEvents:
    frame: pl.DataFrame  # user_id, item_id (strings), ts, context columns; arrival order
    segments: list[dict]  # per segment read: file, events, first/last received_at (ms)
    log: QualityLog  # rows read and dropped per reason

    def sha256(self) -> str:
        """Hash of the events added (their CSV text): the same events give the same hash."""
        return hashlib.sha256(self.frame.write_csv().encode()).hexdigest()


def _read(root: Path) -> tuple[pa.Table, list[dict]]:
    segments = read_segments(root)
    if not sum(t.num_rows for _, t in segments):
        raise DataError(
            f"the event log {root} holds no events; point --events at the service's log"
        )
    table = pa.concat_tables([t for _, t in segments])
    summary = [
        {
            "file": path.name,
            "events": t.num_rows,
            "first_received_at": pc.min(t[RECEIVED_AT]).as_py(),
            "last_received_at": pc.max(t[RECEIVED_AT]).as_py(),
        }
        for path, t in segments
        if t.num_rows
    ]
    return table, summary


def _from_context(name: str, dtype: pl.DataType) -> pl.Expr:
    value = pl.col(CONTEXT).str.json_path_match(f"$.{name}")
    if dtype == pl.Categorical:
        return value.cast(pl.Categorical).alias(name)
    return value.cast(dtype, strict=False).alias(name)


def read_log_events(
    root: Path,
    feedback: Feedback,
    since: int,
    context: dict[str, pl.DataType],
    base_keys: pl.DataFrame,
) -> LogEvents:
    """The log's events after `since` that `feedback` counts, not erased, not in the base.

    `context`: the base's context columns and their types; `base_keys`: the base's
    (user_id, item_id, ts) with string ids.
    """
    table, segments = _read(root)
    log = QualityLog()
    log.rows_read = table.num_rows
    erased = erased_rows(table, read_tombstones(root))
    kept = table if erased is None else table.filter(pc.invert(erased))
    log.count_dropped("erased_users", table.num_rows - kept.num_rows)
    frame = pl.from_arrow(kept).sort(RECEIVED_AT, maintain_order=True)

    frame = log.drop("not_feedback", frame, frame.filter(pl.col(EVENT_TYPE).is_in(feedback.types)))
    if feedback.min_rating is not None:
        value = pl.col(CONTEXT).str.json_path_match(f"$.{RATING}").cast(pl.Float64, strict=False)
        counts = (pl.col(EVENT_TYPE) != RATING_TYPE) | (value >= feedback.min_rating).fill_null(
            False
        )
        frame = log.drop("below_min_rating", frame, frame.filter(counts))
    frame = log.drop("before_since", frame, frame.filter(pl.col(TS) > since))

    frame = frame.select(
        USER_ID,
        ITEM_ID,
        TS,
        *(_from_context(name, dtype) for name, dtype in context.items()),
    ).with_row_index(ROW)
    frame = clean(frame, QualityConfig(), log)
    fresh = frame.join(base_keys, on=[USER_ID, ITEM_ID, TS], how="anti", maintain_order="left")
    frame = log.drop("already_in_base", frame, fresh)
    return LogEvents(frame.drop(ROW), segments, log)
