"""features.json and user_features.parquet: how a torch-free server builds the user tower's
`context` and `user` inputs from a request.

features.json lists the columns of those inputs in order, each with the rule that turns a raw
value into its code (CODES); user_features.parquet holds every known user's codes exactly as
training computed them (`features.user_codes`). The rules themselves are
`recstack.feature_codes.encode`, the code the server runs; export runs it over the dataset's
users and a sample of its events and refuses to write a spec that disagrees with training's
encoders.
"""

import json
from pathlib import Path

import numpy as np
import polars as pl

from recstack.artifact_manifest import FileRef, UserFeatures
from recstack.dataset_dir import PreparedDataset
from recstack.errors import RecstackError
from recstack.feature_codes import (
    AGE_EDGES,
    BUCKETS,
    HOUR_OF_DAY,
    TS_KINDS,
    UNTIMED,
    VOCAB,
    WEEKDAY_KIND,
    encode,
)
from recstack.schema import AGE, INTERACTIONS_FILE, TS, USER_ID, USER_IDX
from recstack.training.data.features import (
    HOUR,
    WEEKDAY,
    FeatureVocab,
    context_codes,
    user_codes,
)
from recstack.training.models.two_tower import TwoTower

FEATURES_FILE = "features.json"
USER_FEATURES_FILE = "user_features.parquet"
CHECK_EVENTS = 10_000  # events whose context codes the spec is checked on at export

CODES = (
    "Entry i of 'context' / 'user' is column i of the user tower's input of that name; every "
    "code is int64 and 0 means unknown or missing. hour_of_day: (ts % 86400) // 3600 + 1, "
    "weekday: ((ts // 86400) + 3) % 7 + 1 (Monday = 1), with ts = the request time in int64 "
    "seconds UTC; untimed: always 0 (the training data's times were sequence positions). vocab: the value as a string (ints in decimal, booleans 'true'/'false') at "
    "position i of 'values' -> i + 1, any other value or missing -> 0. buckets: a number v -> "
    "searchsorted(edges, v, side='right') + 1, missing or NaN -> 0. 'size' = number of codes, "
    "0 included; codes outside 0..size-1 are read as 0. Known users: take their 'user' codes "
    "from user_features.parquet (row by user_id) rather than recomputing them."
)
HISTORY = (
    "The 'history' input holds the item_idx (items.parquet) of the user's most recent events, "
    "oldest first, at most history_len, right-padded with 0 (PAD); 'lengths' holds the number "
    "of real items. A cold user has lengths 0 and one PAD column (history [[0]]): the length "
    "dim must be >= 1."
)


def _context_entry(name: str, size: int, vocab: FeatureVocab) -> dict:
    if name in (HOUR, WEEKDAY) and not vocab.time_of_day:
        return {"name": name, "kind": UNTIMED, "source": TS, "size": size}
    if name == HOUR:
        return {"name": name, "kind": HOUR_OF_DAY, "source": TS, "size": size}
    if name == WEEKDAY:
        return {"name": name, "kind": WEEKDAY_KIND, "source": TS, "size": size}
    return {"name": name, "kind": VOCAB, "values": vocab.context[name], "size": size}


def _user_entry(name: str, size: int, vocab: FeatureVocab, users: pl.DataFrame) -> dict:
    if name == AGE and users.schema[name].is_numeric():  # as features.user_codes buckets it
        return {"name": name, "kind": BUCKETS, "edges": list(AGE_EDGES), "size": size}
    return {"name": name, "kind": VOCAB, "values": vocab.user[name], "size": size}


def feature_spec(net: TwoTower, vocab: FeatureVocab, users: pl.DataFrame) -> dict:
    """The features.json content for `net` (its input columns in the order of `net.sizes`)."""
    missing = [n for n in net.sizes.user if n not in users.columns]
    missing += [n for n in net.sizes.context if n not in (HOUR, WEEKDAY, *vocab.context)]
    if missing or list(net.sizes.user) != list(vocab.user):
        raise RecstackError(
            f"the model's features {missing or list(net.sizes.user)} do not match the dataset "
            f"and vocab (users.parquet columns {users.columns}); export from the dataset the "
            "run was trained on"
        )
    return {
        "codes": CODES,
        "history": HISTORY,
        "history_len": net.config.history_len,
        "similarity": net.config.similarity,
        "temperature": net.config.temperature,
        "context": [_context_entry(n, s, vocab) for n, s in net.sizes.context.items()],
        "user": [_user_entry(n, s, vocab, users) for n, s in net.sizes.user.items()],
    }


def _raw(frame: pl.DataFrame, entry: dict) -> list:
    """The raw values a server would see for `entry`: ts, numbers or strings."""
    column = frame[entry.get("source", entry["name"])]
    if entry["kind"] in TS_KINDS:
        return column.to_list()
    return column.cast(pl.Float64 if entry["kind"] == BUCKETS else pl.String).to_list()


def _check(entries: list[dict], frame: pl.DataFrame, expected: np.ndarray, what: str) -> None:
    """`encode` over `frame` must give training's codes expected [N, len(entries)]."""
    for j, entry in enumerate(entries):
        wrong = int((encode(entry, _raw(frame, entry)) != expected[:, j]).sum())
        if wrong:
            raise RecstackError(
                f"features.json rule for {what} field {entry['name']!r} ({entry['kind']}) "
                f"gives other codes than training for {wrong} of {frame.height} rows"
            )


def write_features(
    net: TwoTower, vocab: FeatureVocab, data: PreparedDataset, out: Path
) -> tuple[FileRef, UserFeatures]:
    """Write features.json and user_features.parquet into `out`; returns their manifest
    entries."""
    users = data.users.sort(USER_IDX)
    spec = feature_spec(net, vocab, users)
    codes = user_codes(users, vocab)  # [n_users, U], row = user_idx
    events = pl.read_parquet(
        data.path / INTERACTIONS_FILE, columns=[TS, *vocab.context], n_rows=CHECK_EVENTS
    )
    _check(spec["user"], users, codes, "user")
    _check(spec["context"], events, context_codes(events, vocab), "context")
    columns = [entry["name"] for entry in spec["user"]]
    table = users.select(USER_ID).with_columns(
        pl.Series(name, codes[:, j], dtype=pl.Int64) for j, name in enumerate(columns)
    )
    table.write_parquet(out / USER_FEATURES_FILE)
    (out / FEATURES_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return FileRef(file=FEATURES_FILE), UserFeatures(
        file=USER_FEATURES_FILE, key=USER_ID, columns=columns
    )
