"""`seqlines:` (one user per line, `user item item ...`): round trip through prepare, the
line-numbered errors, ordinal time in the manifest, and the real Amazon files when present."""

import json
import time
from pathlib import Path

import polars as pl
import pytest

from recstack.dataset_dir import load_dataset
from recstack.datasets.prepare import prepare
from recstack.datasets.sources import TS_ORDINAL
from recstack.datasets.sources.resolve import SPEC_FORMS, open_source
from recstack.datasets.sources.seqlines import load_seqlines
from recstack.datasets.sources.tabular import ColumnMapping
from recstack.datasets.splits import apply_split
from recstack.errors import DataError
from recstack.eval_set import build_eval_set
from recstack.manifest import file_sha256
from recstack.schema import (
    INTERACTIONS_FILE,
    ITEM_ID,
    ITEM_IDX,
    QUALITY_FILE,
    SPLIT_LOO,
    SPLIT_TEMPORAL,
    TEST,
    TRAIN,
    TS,
    USER_ID,
    USER_IDX,
    VALID,
)

AMAZON = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon"

# user 10 comes first in the file, ids are not dense, items are not in id order, user 7 repeats
# an item, there are blank lines, tabs, CRLF and trailing spaces
SMALL = "10 5 3 9 1\n\n3\t9 5\r\n7 1 2 1 8 4 6  \n   \n12 2\n"
SEQUENCES = {10: [5, 3, 9, 1], 3: [9, 5], 7: [1, 2, 1, 8, 4, 6], 12: [2]}


def _write(tmp_path, text: str | bytes, name: str = "seqs.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _sequences(out: Path) -> dict[int, list[int]]:
    """user_id -> item_ids in stored order, read back through the vocabularies."""
    data = load_dataset(out)
    frame = (
        data.interactions.join(data.users, on=USER_IDX)
        .join(data.items, on=ITEM_IDX)
        .sort(USER_IDX, TS)
    )
    grouped = frame.group_by(USER_ID, maintain_order=True).agg(ITEM_ID)
    return dict(zip(grouped[USER_ID], grouped[ITEM_ID].to_list(), strict=True))


def test_small_file_round_trips_with_order_ids_counts_and_loo(tmp_path):
    raw = _write(tmp_path, SMALL)
    out = tmp_path / "ds"
    manifest = prepare(source=f"seqlines:{raw}", out=out, quiet=True)
    assert _sequences(out) == SEQUENCES
    assert manifest["counts"] == {"interactions": 13, "users": 4, "items": 8}

    data = load_dataset(out)
    # integer ids stay integers, numbered in numeric order (docs/architecture.md §4)
    assert data.users[USER_ID].dtype == pl.Int64 and data.users[USER_ID].to_list() == [3, 7, 10, 12]
    assert data.items[ITEM_ID].to_list() == [1, 2, 3, 4, 5, 6, 8, 9]
    assert data.items[ITEM_IDX].to_list() == list(range(1, 9))
    frame = data.interactions
    # ts is the 0-based position in the user's line
    assert frame.group_by(USER_IDX, maintain_order=True).agg(TS)[TS].to_list() == [
        [0, 1],
        [0, 1, 2, 3, 4, 5],
        [0, 1, 2, 3],
        [0],
    ]
    # leave-one-out: the last item is the test target, the one before it the valid target
    codes = frame.group_by(USER_IDX, maintain_order=True).agg(SPLIT_LOO)[SPLIT_LOO].to_list()
    assert codes == [
        [TRAIN, TEST],
        [TRAIN, TRAIN, TRAIN, TRAIN, VALID, TEST],
        [TRAIN, TRAIN, VALID, TEST],
        [TRAIN],
    ]
    test = build_eval_set(apply_split(frame, "loo"), "test", data.n_items)
    item_of = dict(zip(data.items[ITEM_IDX], data.items[ITEM_ID], strict=True))
    user_of = dict(zip(data.users[USER_IDX], data.users[USER_ID], strict=True))
    targets = {
        user_of[int(u)]: [item_of[int(i)] for i in test.targets(row)]
        for row, u in enumerate(test.users)
    }
    assert targets == {3: [5], 7: [6], 10: [1]}
    assert [item_of[int(i)] for i in test.history(list(test.users).index(1))] == [1, 2, 1, 8, 4]


def test_manifest_and_report_say_ts_is_ordinal_and_there_is_no_temporal_split(tmp_path):
    raw = _write(tmp_path, SMALL)
    out = tmp_path / "ds"
    manifest = prepare(source=f"seqlines:{raw}", out=out, quiet=True)
    assert manifest["time"]["ts_unit"] == TS_ORDINAL and "not seconds" in manifest["time"]["note"]
    assert manifest["raw_files"] == [str(raw)]
    assert manifest["raw_sha256"] == {str(raw): file_sha256(raw)}
    assert manifest["splits"]["counts"] == {SPLIT_LOO: {"train": 8, "valid": 2, "test": 3}}
    assert manifest["splits"]["temporal_test_from_ts"] is None
    report = json.loads((out / QUALITY_FILE).read_text())
    assert report["rows_read"] == report["rows_kept"] == 13 and report["ts_unit"] == TS_ORDINAL
    assert report["flagged"]["non_monotone_timestamps"] == 0
    frame = pl.read_parquet(out / INTERACTIONS_FILE)
    assert frame[SPLIT_TEMPORAL].dtype == pl.Int8 and frame[SPLIT_TEMPORAL].null_count() == 13
    # every consumer of a split goes through stored_split: the temporal one is refused
    with pytest.raises(DataError, match="has no temporal split: its ts are positions"):
        apply_split(frame, "temporal")


def test_a_source_with_times_says_seconds(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("u,i,t\n1,2,1700000000\n1,3,1700000100\n")
    manifest = prepare(
        source=f"csv:{log}", out=tmp_path / "ds", columns=ColumnMapping("u", "i", "t"), quiet=True
    )
    assert manifest["time"] == {"ts_unit": "seconds"}
    assert set(manifest["splits"]["counts"]) == {SPLIT_LOO, SPLIT_TEMPORAL}


def test_several_partitions_give_the_same_dataset(tmp_path):
    raw = _write(tmp_path, SMALL)
    one = prepare(source=f"seqlines:{raw}", out=tmp_path / "one", quiet=True)
    many = prepare(source=f"seqlines:{raw}", out=tmp_path / "many", quiet=True, rows_per_part=2)
    frames = [pl.read_parquet(tmp_path / d / INTERACTIONS_FILE) for d in ("one", "many")]
    assert frames[0].equals(frames[1], null_equal=True)
    assert many["splits"] == one["splits"] and many["vocab"] == one["vocab"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1 2 3\n2 4 x5 6\n", r"line 2: item id 'x5' \(token 3\) is not an integer id"),
        ("1 2 3\n\n\nu2 4\n", r"line 4: user id 'u2' \(token 1\) is not an integer id"),
        ("1 2 3.0\n", r"line 1: item id '3.0' \(token 3\) is not an integer id"),
        ("1 -2\n", r"line 1: item id '-2' \(token 2\) is not an integer id"),
        ("1 2,3,4\n", r"line 1: item id '2,3,4' \(token 2\) is not an integer id"),
        ("1 99999999999999999999\n", r"line 1: item id '9+' \(token 2\) is not an integer id"),
        ("1 2 3\n\n2\n3 4\n", r"line 3: user 2 has no items"),
        ("1 2 3\n2 5\n\n1 4 6\n", r"line 4: user 1 already has a line \(line 1\)"),
        ("1 2\n007 3\n7 4\n", r"line 3: user 7 already has a line \(line 2\)"),
        # several problems: the earliest line is reported
        ("1 2\n2\n1 3\nx 4\n", r"line 2: user 2 has no items"),
        ("1 2\n1 3\n2\n", r"line 2: user 1 already has a line \(line 1\)"),
        ("5 6\n5\n", r"line 2: user 5 has no items"),
        ("", r"holds no sequences \(empty or only blank lines\)"),
        ("\n  \n\t\r\n", r"holds no sequences"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, text, match):
    raw = _write(tmp_path, text)
    with pytest.raises(DataError, match=match) as caught:
        load_seqlines(raw)
    message = str(caught.value)
    assert str(raw) in message and "\n" not in message


def test_the_error_reaches_prepare_and_writes_nothing(tmp_path):
    raw = _write(tmp_path, "1 2 3\n2 4 5\n3 4 five\n")
    with pytest.raises(DataError, match=r"line 3: item id 'five'"):
        prepare(source=f"seqlines:{raw}", out=tmp_path / "ds", quiet=True)
    assert not (tmp_path / "ds").exists()


def test_not_utf8_names_the_line(tmp_path):
    raw = _write(tmp_path, b"1 2 3\n2 4\n3 \xff 5\n")
    with pytest.raises(DataError, match=r"line 3: not UTF-8 text"):
        load_seqlines(raw)


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path):
    raw = _write(tmp_path, "\ufeff1 2 3\n")
    assert load_seqlines(raw).interactions.collect()[USER_ID].to_list() == [1, 1]


def test_spec_errors(tmp_path):
    assert "seqlines:<file>" in SPEC_FORMS
    with pytest.raises(DataError, match=r"missing\.txt: not a file"):
        open_source(f"seqlines:{tmp_path / 'missing.txt'}")
    with pytest.raises(DataError, match="not a file"):
        open_source(f"seqlines:{tmp_path}")
    raw = _write(tmp_path, SMALL)
    with pytest.raises(DataError, match="fixed layout"):
        open_source(f"seqlines:{raw}", min_rating=4)
    raw_log = open_source(f"seqlines:{raw}")
    assert raw_log.ts_unit == TS_ORDINAL and raw_log.files == [raw]
    assert raw_log.interactions.collect_schema() == pl.Schema(
        {USER_ID: pl.Int64, ITEM_ID: pl.Int64, TS: pl.Int64}
    )


def test_rules_that_need_seconds_or_ratings_are_refused(tmp_path):
    raw = _write(tmp_path, SMALL)
    for option in ({"max_events_per_second": 1.0}, {"min_rating": 4.0}):
        with pytest.raises(DataError, match="has no timestamps and no ratings"):
            prepare(source=f"seqlines:{raw}", out=tmp_path / "ds", quiet=True, **option)
    # k-core works as on any source: users and items with >= 2 interactions
    manifest = prepare(source=f"seqlines:{raw}", out=tmp_path / "ds", quiet=True, k_core=2)
    assert manifest["counts"]["users"] < 4


# the literature's counts for the same files (users, items, interactions)
PUBLISHED = {
    "Beauty.txt": (22_363, 12_101, 198_502),
    "Sports_and_Outdoors.txt": (35_598, 18_357, 296_337),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_amazon_benchmark_file_prepares_to_the_published_counts(tmp_path, name):
    raw = AMAZON / name
    if not raw.is_file():
        pytest.skip(f"{raw} is not here (the shared Amazon benchmark data)")
    started = time.perf_counter()
    manifest = prepare(source=f"seqlines:{raw}", out=tmp_path / "ds", quiet=True)
    assert time.perf_counter() - started < 30
    users, items, interactions = PUBLISHED[name]
    assert manifest["counts"] == {"interactions": interactions, "users": users, "items": items}
    assert manifest["splits"]["counts"][SPLIT_LOO]["test"] == users  # every user has >= 2 items
    assert manifest["raw_sha256"] == {str(raw): file_sha256(raw)}
    # the first line's items, in the file's order, under the file's ids
    first = raw.read_text().split("\n", 1)[0].split()
    data = load_dataset(tmp_path / "ds")
    user0 = data.users.filter(pl.col(USER_ID) == int(first[0]))[USER_IDX][0]
    items = (
        data.interactions.filter(pl.col(USER_IDX) == user0)
        .join(data.items, on=ITEM_IDX)
        .sort(TS)[ITEM_ID]
    )
    assert items.to_list() == [int(t) for t in first[1:]]


def test_line_numbers_hold_deep_in_a_long_file(tmp_path):
    lines = [f"{u} {u + 1} {u + 2}" for u in range(1, 6001)]
    lines[4320] = "4321 17 1e3 18"  # line 4321
    lines[5998] = "5999"  # line 5999: no items, but later than the bad token
    raw = _write(tmp_path, "\n\n".join(lines[:100]) + "\n" + "\n".join(lines[100:]) + "\n")
    # the first 100 sequences are separated by blank lines: 99 more lines before line 4321's
    with pytest.raises(DataError, match=r"line 4420: item id '1e3' \(token 3\)"):
        load_seqlines(raw)
