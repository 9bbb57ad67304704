"""`seqlines:<file>`: one user per line, `user item item ...`, the user's items in time order.

The layout much of the sequential-recommendation literature ships (Amazon Beauty / Sports as
`Beauty.txt`): whitespace-separated non-negative integer ids, no timestamps. Ids stay the
integers of the file (docs/architecture.md §4). A user's items keep their order; repeats are
kept. Blank lines are skipped.

There are no times: an interaction's `ts` is its 0-based position in its user's line, so the
order is exact and leave-one-out holds out each user's last item (the literature's protocol),
but ts is not seconds. The RawLog says so (`ts_unit="ordinal"`) and prepare records it in the
manifest (docs/architecture.md §3).

Bad input raises DataError naming the file and the line: a token that is not an integer id, a
user with no items, a user on a second line, a file with no sequences. The file is read whole
(a line per user; the literature's files are a few MB).
"""

from pathlib import Path

import polars as pl

from recstack.datasets.sources import TS_ORDINAL, RawLog
from recstack.errors import DataError
from recstack.schema import ITEM_ID, TS, USER_ID

_LINE, _TOKEN, _POS, _ID = "_line", "_token", "_pos", "_id"
_INTEGER = r"^[0-9]+$"
_LAYOUT = "a line is `user item item ...`: integer ids separated by whitespace"


def _text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}; check the seqlines: path") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}, line {line}: not UTF-8 text (byte {exc.start}); {_LAYOUT}"
        ) from None


def _short(token: str) -> str:
    return repr(token if len(token) <= 40 else token[:37] + "...")


def _first_error(path: Path, tokens: pl.DataFrame) -> str | None:
    """The message for the earliest bad line of `tokens` (one row per token), or None."""
    errors: list[tuple[int, int, str]] = []  # (line, check, message): the earliest line wins
    bad = tokens.filter(pl.col(_ID).is_null()).head(1)
    if bad.height:
        line, pos, token = bad.select(_LINE, _POS, _TOKEN).row(0)
        role = "user id" if pos == 0 else "item id"
        errors.append(
            (
                line,
                0,
                f"{path}, line {line}: {role} {_short(token)} (token {pos + 1}) is not an "
                f"integer id (0 to 2^63 - 1); {_LAYOUT}",
            )
        )
    users = tokens.filter(pl.col(_POS) == 0)
    empty = tokens.filter((pl.col(_POS) == 0) & (pl.len().over(_LINE) == 1)).head(1)
    if empty.height:
        line, token = empty.select(_LINE, _TOKEN).row(0)
        errors.append(
            (
                line,
                1,
                f"{path}, line {line}: user {token} has no items; add its items or drop the line",
            )
        )
    users = users.drop_nulls(_ID)
    again = users.filter(~pl.col(_ID).is_first_distinct()).head(1)
    if again.height:
        line, user = again.select(_LINE, _ID).row(0)
        first = users.filter(pl.col(_ID) == user)[_LINE][0]
        errors.append(
            (
                line,
                2,
                f"{path}, line {line}: user {user} already has a line (line {first}); put each "
                "user's items on one line, in time order",
            )
        )
    return min(errors)[2] if errors else None


def load_seqlines(path: Path | str) -> RawLog:
    """A sequence-per-line file as a RawLog: user_id, item_id (Int64), ts (the position)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"seqlines:{path}: not a file; give the path of one `user item ...` file")
    lines = pl.DataFrame({"text": _text(path).split("\n")}).with_row_index(_LINE, offset=1)
    tokens = (
        lines.select(_LINE, pl.col("text").str.extract_all(r"\S+").alias(_TOKEN))
        .filter(pl.col(_TOKEN).list.len() > 0)
        .with_columns(pl.int_ranges(pl.col(_TOKEN).list.len()).alias(_POS))
        .explode(_TOKEN, _POS)
        .with_columns(
            pl.when(pl.col(_TOKEN).str.contains(_INTEGER))
            .then(pl.col(_TOKEN).cast(pl.Int64, strict=False))  # null past Int64
            .alias(_ID)
        )
    )
    if tokens.height == 0:
        raise DataError(f"{path} holds no sequences (empty or only blank lines); {_LAYOUT}")
    message = _first_error(path, tokens)
    if message is not None:
        raise DataError(message)
    interactions = tokens.select(
        pl.col(_ID).first().over(_LINE).alias(USER_ID),  # token 0 of the line
        pl.col(_ID).alias(ITEM_ID),
        (pl.col(_POS) - 1).alias(TS),
        _POS,
    ).filter(pl.col(_POS) > 0)
    n_users = tokens.filter(pl.col(_POS) == 0).height
    return RawLog(
        interactions=interactions.drop(_POS).lazy(),
        items=None,
        users=None,
        source=(
            f"sequence-per-line file {path} ({n_users:,} users, {interactions.height:,} "
            "interactions; no timestamps: ts is the position in the user's sequence)"
        ),
        files=[path],
        ts_unit=TS_ORDINAL,
    )
