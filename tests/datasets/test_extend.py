"""`recstack data extend`: a base dataset + the event log -> a new version with the vocab kept."""

import asyncio
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_data import prepared_log

from recstack.cli import main
from recstack.dataset_dir import load_dataset
from recstack.datasets.extend import PARENTS, extend
from recstack.datasets.prepare import prepare
from recstack.datasets.sources.tabular import ColumnMapping
from recstack.errors import DataError
from recstack.schema import (
    ITEM_ID,
    ITEM_IDX,
    MANIFEST_FILE,
    SPLIT_LOO,
    SPLIT_TEMPORAL,
    TEST,
    TS,
    USER_ID,
    USER_IDX,
)
from recstack.serving import schemas
from recstack.serving.backend import LocalBackend
from recstack.serving.config import AppArgs
from recstack.serving.event_log import EventLog, tombstone
from recstack.serving.service import build_service

# base log: users u1..u4 on items 10..14 (integer ids); its last interaction (cut-off) is 130
BASE = {
    "users": ["u1", "u1", "u2", "u3", "u3", "u4"],
    "items": [10, 11, 10, 12, 13, 14],
    "ts": [100, 110, 105, 101, 111, 130],
}
CUTOFF = 130


def ev(user, item, ts, kind="view", **context):
    return {"user_id": user, "item_id": item, "type": kind, "ts": ts, "context": context or None}


LOG = [
    ev("u1", "15", 200),  # a new item
    ev("u1", "10", 210, "click"),  # a known user on a known item
    ev("u5", "10", 220),  # a new user
    ev("u3", "10", 240),  # an erased user (tombstone below), also in the base
    ev("u1", "11", 110),  # the base's own event: before the cut-off
    ev("u2", "12", 50, "purchase"),  # older than the cut-off
    ev("u1", "99", 300, "impression"),  # not an interaction
    ev("u4", "14", 250, "rating", rating=2),  # a low rating
    ev("u1", "15", 200),  # an exact duplicate
]


@pytest.fixture
def world(tmp_path):
    base = prepared_log(tmp_path, BASE["users"], BASE["items"], BASE["ts"])
    events = tmp_path / "events"
    log = EventLog(events, writer="test")
    log.append(LOG[:5])
    log.close()  # sealed Parquet
    log = EventLog(events, writer="test")
    log.append(LOG[5:])  # left open (an Arrow IPC segment), read up to its last batch
    tombstone(events, "u3")
    return {"base": base, "events": events, "root": tmp_path, "open": log}


def ids(path):
    data = load_dataset(path)
    frame = data.interactions.join(data.users, on=USER_IDX).join(data.items, on=ITEM_IDX)
    return data, frame.select(
        USER_ID, pl.col(ITEM_ID).cast(pl.String), TS, SPLIT_LOO, SPLIT_TEMPORAL
    )


def test_new_version_keeps_the_vocab_appends_new_ids_and_drops_erased_users(world):
    out = world["root"] / "v2"
    manifest = extend(world["base"], world["events"], out, quiet=True)
    base, new = load_dataset(world["base"]), load_dataset(out)
    assert manifest["content_hash"] == new.manifest["content_hash"]

    kept_items = base.items.join(new.items, on=ITEM_ID, suffix="_new")
    assert kept_items.height == base.items.height
    assert (kept_items[ITEM_IDX] == kept_items[f"{ITEM_IDX}_new"]).all()
    assert new.items[ITEM_ID].dtype == pl.Int64  # integer ids stay integers
    assert new.items.sort(ITEM_IDX).tail(1).rows() == [(6, 15)]  # "15" appended after 5
    assert new.users.sort(USER_IDX)[USER_ID].to_list() == ["u1", "u2", "u4", "u5"]  # dense

    _, rows = ids(out)
    assert "u3" not in rows[USER_ID].to_list()
    assert rows.select(USER_ID, ITEM_ID, TS).is_unique().all()
    assert sorted(rows.filter(pl.col(TS) > CUTOFF).select(USER_ID, ITEM_ID, TS).rows()) == [
        ("u1", "10", 210),
        ("u1", "15", 200),
        ("u4", "14", 250),  # no --feedback and no min_rating in the base: ratings count
        ("u5", "10", 220),
    ]
    last = new.interactions.group_by(USER_IDX).agg(
        pl.col(SPLIT_LOO).last(), pl.len(), (pl.col(SPLIT_LOO) == TEST).sum().alias("tests")
    )
    assert last.filter(pl.col("len") >= 2).select((pl.col(SPLIT_LOO) == TEST).all()).item()
    assert last.filter(pl.col("len") >= 2)["tests"].to_list() == [1, 1]  # u1, u4

    parents = new.manifest[PARENTS]
    assert parents["base"] == {
        "path": str(world["base"]),
        "content_hash": base.manifest["content_hash"],
    }
    assert (
        parents["since"] == CUTOFF and parents["feedback"] == "view=1,click=1,purchase=1,rating=1"
    )
    assert [s["events"] for s in parents["event_log"]["segments"]] == [5, 4]
    counts = parents["counts"]
    assert counts["events_read"] == len(LOG) and counts["events_added"] == 4
    assert {k: v for k, v in counts["events_dropped"].items() if v} == {
        "erased_users": 1,
        "not_feedback": 1,
        "before_since": 2,
        "exact_duplicates": 1,
    }
    assert (counts["new_items"], counts["new_users"]) == (1, 1)
    assert (counts["base_users_erased"], counts["base_rows_erased"]) == (1, 2)


def test_splits_are_the_ones_prepare_computes_on_the_same_log(world):
    out = world["root"] / "v2"
    extend(world["base"], world["events"], out, quiet=True)
    data, rows = ids(out)
    log = pl.DataFrame(  # the base without u3, then the added events, in log order
        {
            "u": ["u1", "u1", "u2", "u4", "u1", "u1", "u5", "u4"],
            "i": ["10", "11", "10", "14", "15", "10", "10", "14"],
            "t": [100, 110, 105, 130, 200, 210, 220, 250],
        }
    )
    log.write_csv(world["root"] / "combined.csv")
    reference = world["root"] / "reference"
    mapping = ColumnMapping("u", "i", "t")
    prepare(f"csv:{world['root'] / 'combined.csv'}", reference, columns=mapping, quiet=True)
    _, expected = ids(reference)
    key = [USER_ID, ITEM_ID, TS]
    assert rows.sort(key).equals(expected.sort(key))
    ref_splits = load_dataset(reference).manifest["splits"]
    assert data.manifest["splits"] == ref_splits


def test_a_rerun_with_nothing_new_does_nothing(world, capsys):
    v2, v3 = world["root"] / "v2", world["root"] / "v3"
    extend(world["base"], world["events"], v2, quiet=True)
    written = (v2 / MANIFEST_FILE).read_text()
    argv = ["data", "extend", "--base", str(world["base"]), "--events", str(world["events"])]
    assert main([*argv, "--out", str(v2)]) == 0  # same base, same log: left as it is
    assert (v2 / MANIFEST_FILE).read_text() == written
    assert "already holds this version" in capsys.readouterr().out
    argv = ["data", "extend", "--base", str(v2), "--events", str(world["events"])]
    assert main([*argv, "--out", str(v3)]) == 0  # the new version as base: nothing new
    assert "nothing new since ts 250" in capsys.readouterr().out and not v3.exists()

    world["open"].append([ev("u2", "11", 400)])
    assert main([*argv, "--out", str(v3), "--quiet", "true"]) == 0
    assert load_dataset(v3).manifest[PARENTS]["counts"]["events_added"] == 1


def test_feedback_and_since_choose_the_events(world):
    out = world["root"] / "v2"
    spec = "view=1,click=0,rating>=4"
    manifest = extend(world["base"], world["events"], out, since=0, feedback=spec, quiet=True)
    counts = manifest[PARENTS]["counts"]
    assert manifest[PARENTS]["feedback"] == "view=1,rating>=4" and manifest[PARENTS]["since"] == 0
    dropped = {k: v for k, v in counts["events_dropped"].items() if v}
    # purchase, click, impression; the rating of 2; the base's own (u1, 11, 110)
    assert dropped == {
        "erased_users": 1,
        "not_feedback": 3,
        "below_min_rating": 1,
        "exact_duplicates": 1,
        "already_in_base": 1,
    }
    assert counts["events_added"] == 2  # u1 views 15, u5 views 10


def test_new_ids_that_are_not_integers_turn_the_ids_into_strings(world):
    EventLog(world["events"], writer="more").append([ev("u1", "sku-9", 500)])
    extend(world["base"], world["events"], world["root"] / "v2", quiet=True)
    base, new = load_dataset(world["base"]), load_dataset(world["root"] / "v2")
    assert new.items[ITEM_ID].dtype == pl.String
    assert new.items.sort(ITEM_IDX)[ITEM_ID].to_list() == [
        "10",
        "11",
        "12",
        "13",
        "14",
        "15",
        "sku-9",
    ]
    assert new.manifest["vocab"]["items"]["sha256"] != base.manifest["vocab"]["items"]["sha256"]


def test_events_of_users_without_tracking_consent_never_reach_the_log(tmp_path):
    """extend relies on the service: it logs no event of a user whose tracking is off."""
    dataset = prepared_log(tmp_path, ["a", "b"], ["1", "2"], [1, 2])
    args = AppArgs(
        store={"kind": "embedded", "path": str(tmp_path / "s.sqlite")},
        event_log=tmp_path / "events",
    )
    backend = LocalBackend({}, {})

    async def post_events():
        service = build_service(args, lambda store: backend, "test")
        await service.set_consent("quiet", schemas.Consent(personalization=True, tracking=False))
        sent = [schemas.Event(user_id=u, item_id="2", type="view", ts=10) for u in ("quiet", "a")]
        answer = await service.events(schemas.EventsRequest(events=sent))
        await service.close()
        return answer

    answer = asyncio.run(post_events())
    assert (answer.accepted, answer.dropped_no_consent) == (1, 1)
    manifest = extend(dataset, tmp_path / "events", tmp_path / "v2", quiet=True)
    assert manifest[PARENTS]["counts"]["events_read"] == 1
    assert "quiet" not in load_dataset(tmp_path / "v2").users[USER_ID].to_list()


def test_bad_input_is_one_line_and_exit_2(world, capsys):
    root, base, events = world["root"], str(world["base"]), str(world["events"])
    foreign = root / "foreign"
    foreign.mkdir()
    pq.write_table(
        pa.table({"user": ["x"], "when": [1]}), foreign / "0000000000001_1_h_w_x.parquet"
    )
    (root / "empty").mkdir()
    cases = {
        "is not a finished dataset directory": ["--base", str(root), "--events", events],
        "is not an event log directory": ["--base", base, "--events", str(root / "none")],
        "holds no events": ["--base", base, "--events", str(root / "empty")],
        "is not an event log segment": ["--base", base, "--events", str(foreign)],
        "not an interaction type": [
            "--base",
            base,
            "--events",
            events,
            "--feedback",
            "impression=1",
        ],
        "is the base dataset": ["--base", base, "--events", events, "--out", base],
    }
    for message, args in cases.items():
        out = [] if "--out" in args else ["--out", str(root / "x")]
        assert main(["data", "extend", *args, *out, "--quiet", "true"]) == 2, message
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: ") and err.count("\n") == 1, err
        assert not (root / "x").exists()
    extend(world["base"], world["events"], root / "v2", quiet=True)
    (root / "v2" / MANIFEST_FILE).write_text(json.dumps({"kind": "dataset", "schema_version": 1}))
    assert (
        main(["data", "extend", "--base", base, "--events", events, "--out", str(root / "v2")]) == 2
    )
    assert "already exists and is not empty" in capsys.readouterr().err


def test_context_columns_and_the_base_min_rating_carry_over(tmp_path):
    """A base with a rating and a device column, prepared with --min_rating 4."""
    log = {"u": [1, 1, 2], "i": [5, 6, 5], "t": [10, 20, 30], "device": ["tv", "pc", "tv"]}
    pl.DataFrame({**log, "r": [5.0, 3.0, 4.0]}).write_csv(tmp_path / "log.csv")
    mapping = ColumnMapping("u", "i", "t", rating="r", context=["device"])
    base = tmp_path / "base"
    prepare(f"csv:{tmp_path / 'log.csv'}", base, columns=mapping, min_rating=4, quiet=True)
    writer = EventLog(tmp_path / "events")
    writer.append(
        [
            ev("1", "7", 40, device="phone"),
            ev("2", "6", 50, "rating", rating=5, device="tv"),
            ev("2", "7", 60, "rating", rating=3),  # under the base's min_rating
            ev("3", "5", 70, "click"),
        ]
    )
    writer.close()
    manifest = extend(base, tmp_path / "events", tmp_path / "v2", quiet=True)
    assert manifest[PARENTS]["feedback"] == "view=1,click=1,purchase=1,rating>=4"
    added = load_dataset(tmp_path / "v2").interactions.filter(pl.col(TS) > 30)
    assert added.select(TS, "rating", pl.col("device").cast(pl.String)).rows() == [
        (40, None, "phone"),
        (50, 5.0, "tv"),
        (70, None, None),
    ]


def test_a_base_with_ordinal_times_is_refused_in_one_line(world):
    seqs = world["root"] / "seqs.txt"
    seqs.write_text("1 10 11 12\n2 11 12 13\n")
    base = world["root"] / "ordinal"
    prepare(f"seqlines:{seqs}", base, quiet=True)
    with pytest.raises(DataError, match="ordinal times"):
        extend(base, world["events"], world["root"] / "v2", quiet=True)
    assert not (world["root"] / "v2").exists()
