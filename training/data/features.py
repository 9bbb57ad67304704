"""Categorical features for the two-tower model, encoded as int codes (0 = unknown).

- Context of an event: hour of day and day of week (UTC, from `ts`) plus every categorical
  context column of the interactions (e.g. `device`).
- User attributes: low-cardinality columns of users.parquet (gender, occupation, ...); a
  numeric `age` is bucketed like ML-1M's age codes. Ids and zip codes are left out.
- Item features: tags from a list-of-strings column (MovieLens genres) as a multi-hot vector,
  and the release year bucketed by decade.

The vocabularies (`FeatureVocab`) are plain lists of strings, stored with the model so that an
exported model maps request values to the same codes.
"""

from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from recstack.feature_codes import AGE_EDGES, bucket_labels, bucketize
from recstack.schema import AGE, GENRES, ITEM_IDX, TS, USER_ID, USER_IDX, YEAR
from recstack.training.models.two_tower import FeatureSizes

HOUR, WEEKDAY = "hour", "weekday"
YEAR_EDGES = tuple(range(1930, 2030, 10))  # decades; before 1930 and 2020+ get their own code
MAX_CATEGORIES = 50  # user attributes with more distinct values (ids, zip codes) are skipped
_SECONDS_PER_DAY = 86_400


@dataclass
class FeatureVocab:
    """Values of each categorical feature; a value's code is its position + 1 (0 = unknown)."""

    context: dict[str, list[str]] = field(default_factory=dict)
    user: dict[str, list[str]] = field(default_factory=dict)
    item_tags: list[str] = field(default_factory=list)
    # hour and weekday codes from ts; False where ts are sequence positions (ordinal times,
    # docs/architecture.md §3): both codes are then 0 in training and at serving
    time_of_day: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def sizes(self, n_items: int) -> FeatureSizes:
        context = {HOUR: 25, WEEKDAY: 8} | {k: len(v) + 1 for k, v in self.context.items()}
        return FeatureSizes(
            n_items=n_items,
            context=context,
            user={k: len(v) + 1 for k, v in self.user.items()},
            item_tags=len(self.item_tags),
            item_cats={YEAR: len(YEAR_EDGES) + 2},
        )


def context_columns(frame: pl.DataFrame) -> list[str]:
    """Categorical context columns of an interactions frame (strings / categoricals)."""
    return [
        name
        for name, dtype in frame.schema.items()
        if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum)
    ]


def _values(series: pl.Series) -> list[str]:
    return sorted(series.drop_nulls().cast(pl.String).unique().to_list())


def _user_attributes(users: pl.DataFrame) -> dict[str, list[str]]:
    out = {}
    for name, dtype in users.schema.items():
        if name in (USER_IDX, USER_ID):
            continue
        if name == AGE and dtype.is_numeric():
            out[name] = bucket_labels(AGE_EDGES)
        elif users[name].n_unique() <= MAX_CATEGORIES and not dtype.is_float():
            out[name] = _values(users[name])
    return out


def build_vocab(
    train: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame, time_of_day: bool = True
) -> FeatureVocab:
    """Vocabularies from the training events (context) and the user / item tables."""
    tags = []
    if GENRES in items.columns and items.schema[GENRES] == pl.List(pl.String):
        tags = sorted(items[GENRES].explode().drop_nulls().unique().to_list())
    return FeatureVocab(
        context={c: _values(train[c]) for c in context_columns(train)},
        user=_user_attributes(users),
        item_tags=tags,
        time_of_day=time_of_day,
    )


def _codes(series: pl.Series, values: list[str]) -> np.ndarray:
    lookup = pl.DataFrame({"_v": values, "_code": np.arange(1, len(values) + 1)})
    frame = series.cast(pl.String).alias("_v").to_frame()
    joined = frame.join(lookup, on="_v", how="left", maintain_order="left")
    return joined["_code"].fill_null(0).to_numpy().astype(np.int64)


def context_codes(frame: pl.DataFrame, vocab: FeatureVocab) -> np.ndarray:
    """[N, 2 + len(vocab.context)] codes per event: hour + 1, weekday + 1, then each column."""
    ts = frame[TS].to_numpy().astype(np.int64)
    hour = (ts % _SECONDS_PER_DAY) // 3600 + 1
    weekday = ((ts // _SECONDS_PER_DAY) + 3) % 7 + 1  # 1970-01-01 was a Thursday; Monday = 1
    if not vocab.time_of_day:  # positions, not seconds: no hour or weekday to learn
        hour, weekday = np.zeros_like(ts), np.zeros_like(ts)
    columns = [hour, weekday]
    for name, values in vocab.context.items():
        if name in frame.columns:
            columns.append(_codes(frame[name], values))
        else:
            columns.append(np.zeros(frame.height, dtype=np.int64))
    return np.stack(columns, axis=1)


def user_codes(users: pl.DataFrame, vocab: FeatureVocab) -> np.ndarray:
    """[n_users, len(vocab.user)] attribute codes, row = user_idx."""
    users = users.sort(USER_IDX)
    columns = []
    for name, values in vocab.user.items():
        if name == AGE and users.schema[name].is_numeric():
            age = users[name].cast(pl.Float64).fill_null(np.nan).to_numpy()
            code = bucketize(np.nan_to_num(age, nan=-np.inf), AGE_EDGES) + 1
            columns.append(np.where(np.isnan(age), 0, code))
        else:
            columns.append(_codes(users[name], values))
    if not columns:
        return np.zeros((users.height, 0), dtype=np.int64)
    return np.stack(columns, axis=1).astype(np.int64)


def item_features(items: pl.DataFrame, vocab: FeatureVocab) -> tuple[np.ndarray, np.ndarray]:
    """(tags [n_items + 1, len(item_tags)] float32 multi-hot, cats [n_items + 1, 1] int64 year).

    Row = item_idx; row 0 (PAD) is all zeros.
    """
    items = items.sort(ITEM_IDX)
    n_rows = items.height + 1
    tags = np.zeros((n_rows, len(vocab.item_tags)), dtype=np.float32)
    if vocab.item_tags:
        exploded = items.select(ITEM_IDX, GENRES).explode(GENRES).drop_nulls()
        column = _codes(exploded[GENRES], vocab.item_tags) - 1
        rows = exploded[ITEM_IDX].to_numpy().astype(np.int64)
        keep = column >= 0
        tags[rows[keep], column[keep]] = 1.0
    cats = np.zeros((n_rows, 1), dtype=np.int64)
    if YEAR in items.columns:
        year = items[YEAR].cast(pl.Float64).fill_null(np.nan).to_numpy()
        code = bucketize(np.nan_to_num(year, nan=-np.inf), YEAR_EDGES) + 1
        cats[items[ITEM_IDX].to_numpy(), 0] = np.where(np.isnan(year), 0, code)
    return tags, cats
