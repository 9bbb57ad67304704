"""MovieLens as recstack reads it: the tables every route produces, and its title parsing.

Shared by the GroupLens zip reader (`movielens`) and the offline ML-100K route
(`recbole_wheel`), which must give identical tables.
"""

import polars as pl

from recstack.schema import (
    AGE,
    GENDER,
    GENRES,
    ITEM_ID,
    OCCUPATION,
    RATING,
    TITLE,
    TS,
    USER_ID,
    YEAR,
    ZIP,
)

INTERACTION_SCHEMA = pl.Schema(
    {USER_ID: pl.Int64, ITEM_ID: pl.Int64, TS: pl.Int64, RATING: pl.Float32}
)
ITEM_SCHEMA = pl.Schema(
    {ITEM_ID: pl.Int64, TITLE: pl.String, GENRES: pl.List(pl.String), YEAR: pl.Int16}
)
USER_SCHEMA = pl.Schema(
    {USER_ID: pl.Int64, GENDER: pl.String, AGE: pl.Int16, OCCUPATION: pl.String, ZIP: pl.String}
)

# "Name (1995)", "Name (1995) (V)", "Series (2007-)": name, film year, anything after
_TITLE_YEAR = r"^\s*(?P<name>.*\S)\s*\((?P<year>\d{4})(?:-\d{0,4})?\)\s*(?P<rest>.*?)\s*$"


def title_and_year(raw: pl.Expr, fallback_year: pl.Expr | None = None) -> tuple[pl.Expr, pl.Expr]:
    """Raw MovieLens title -> (title without the year, year Int16); vectorised."""
    groups = raw.str.extract_groups(_TITLE_YEAR)
    name, year, rest = (groups.struct.field(f) for f in ("name", "year", "rest"))
    title = (
        pl.when(name.is_null())
        .then(raw.str.strip_chars())
        .when(rest == "")
        .then(name)
        .otherwise(pl.concat_str([name, rest], separator=" "))
    )
    year = year.cast(pl.Int16, strict=False)
    if fallback_year is not None:
        year = pl.coalesce(year, fallback_year)
    return title.alias(TITLE), year.alias(YEAR)
