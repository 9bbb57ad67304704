"""The durable event log: append/read, several writers, crash tails, sealing, erasure, replay,
and the feedback loop into `recstack data prepare --source events:DIR`."""

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from eventually import eventually

from recstack.cli import main
from recstack.errors import DataError
from recstack.event_log_format import read_open, user_hash
from recstack.schema import DEVICE, ITEM_ID, USER_ID
from recstack.serving.event_log import (
    EVENT_SCHEMA,
    EventLog,
    compact,
    read_events,
    rebuild_store,
    tombstone,
)
from recstack.serving.store.embedded import EmbeddedStore

ERASE_ME = "user-erase-me-7"


def ev(user: str, item: str, ts: int, kind: str = "click", **extra) -> dict:
    return {"user_id": user, "item_id": item, "type": kind, "ts": ts, **extra}


def files(directory: Path, suffix: str) -> list[Path]:
    return sorted(p for p in directory.glob(f"*{suffix}") if not p.name.startswith("."))


def _write_and_exit(directory: str, writer: str, batches: list[list[dict]], crash: bool) -> None:
    log = EventLog(directory, writer=writer, segment_max_age_s=0)
    for rows in batches:
        log.append(rows)
    if crash:
        os._exit(0)  # no close: the open segment stays as the crash left it
    log.close()


def run_writer(directory: Path, writer: str, batches: list[list[dict]], crash: bool = False):
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_write_and_exit, args=(str(directory), writer, batches, crash))
    proc.start()
    return proc


def test_append_and_read_back(tmp_path):
    with EventLog(tmp_path, writer="replica/1") as log:
        log.append(
            [
                ev("u1", "i1", 100, "view", context={"device": "mobile", "hour": 3}),
                ev("u1", "i2", 101, arm="sasrec", model_version="v3", request_id="r1"),
                ev("u2", "i1", 102, "impression", received_at=5),
            ]
        )
        log.append([])
        table = read_events(tmp_path)
        assert table.schema.equals(EVENT_SCHEMA, check_metadata=False)
        rows = table.to_pylist()
        assert [r["item_id"] for r in rows] == ["i1", "i2", "i1"]
        assert json.loads(rows[0]["context"]) == {"device": "mobile", "hour": 3}
        assert rows[1]["arm"] == "sasrec" and rows[1]["request_id"] == "r1"
        assert rows[0]["arm"] is None and rows[2]["received_at"] == 5
        assert abs(rows[0]["received_at"] - time.time() * 1000) < 60_000
        (segment,) = files(tmp_path, ".arrow")
        assert "replica-1" in segment.name and f"_{os.getpid()}_" in segment.name
        with pytest.raises(DataError, match="type must be one of"):
            log.append([ev("u1", "i3", 1), ev("u1", "i4", 2, "like")])
        with pytest.raises(DataError, match="ts must be an integer"):
            log.append([ev("u1", "i3", "yesterday")])
        with pytest.raises(DataError, match="unknown field"):
            log.append([{**ev("u1", "i3", 1), "price": 3}])
        assert read_events(tmp_path).num_rows == 3  # nothing of a bad call is written
    assert files(tmp_path, ".arrow") == [] and len(files(tmp_path, ".parquet")) == 1
    assert read_events(tmp_path).to_pylist() == rows  # sealed on close, same rows


def test_sealing_by_size_and_age(tmp_path):
    with EventLog(tmp_path / "size", segment_max_events=3, segment_max_age_s=0) as log:
        for i in range(7):
            log.append([ev("u", f"i{i}", i)])
        # full segments are sealed in the background (Parquet written, then the .arrow removed)
        eventually(
            lambda: (
                len(files(log.directory, ".parquet")) >= 2
                and len(files(log.directory, ".arrow")) == 1
            ),
            timeout_s=5,
        )
        assert len(files(log.directory, ".parquet")) == 2
        assert read_events(log.directory).column(ITEM_ID).to_pylist() == [f"i{i}" for i in range(7)]
        assert read_events(log.directory, include_open=False).num_rows == 6
    with EventLog(tmp_path / "age", segment_max_age_s=0.2) as log:
        log.append([ev("u", "i", 1)])
        # the background thread seals without further appends
        eventually(lambda: not files(log.directory, ".arrow"), timeout_s=5)
        assert pq.read_table(files(log.directory, ".parquet")[0]).num_rows == 1


def test_two_writer_processes_share_a_directory(tmp_path):
    procs = [
        run_writer(tmp_path, f"w{w}", [[ev(f"u{w}", f"{w}-{i}", i)] for i in range(30)])
        for w in range(2)
    ]
    mine = EventLog(tmp_path, writer="main")
    mine.append([ev("u9", "x", 1)])
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    table = read_events(tmp_path)
    assert table.num_rows == 61
    for w in range(2):
        items = table.filter(pc.equal(table[USER_ID], f"u{w}"))[ITEM_ID]
        assert items.to_pylist() == [f"{w}-{i}" for i in range(30)]
    names = [p.name for p in files(tmp_path, ".parquet") + files(tmp_path, ".arrow")]
    assert len(names) == 3 and len({n.split("_")[1] for n in names}) == 3  # three pids
    mine.close()


def test_a_long_segment_reads_in_order_as_one_chunk_even_when_cut(tmp_path):
    """Many one-event appends (a replica's 5-minute segment holds thousands) come back in
    order, in one chunk (a many-chunk table is slow to seal and to free), a cut tail dropped."""
    log = EventLog(tmp_path, writer="long", segment_max_age_s=0)
    for i in range(300):  # several merge groups and a partial one
        log.append([ev(f"u{i % 7}", f"i{i}", i)])
    (segment,) = files(tmp_path, ".arrow")
    table, truncated = read_open(segment)
    assert not truncated and table[ITEM_ID].num_chunks == 1
    assert table[ITEM_ID].to_pylist() == [f"i{i}" for i in range(300)]
    cut = tmp_path / "cut" / segment.name  # a copy with the last batch cut in the middle
    cut.parent.mkdir()
    cut.write_bytes(segment.read_bytes()[:-40])
    table, truncated = read_open(cut)
    assert truncated and table[ITEM_ID].to_pylist() == [f"i{i}" for i in range(299)]
    log.close()


def test_truncated_tail_of_a_crashed_writer(tmp_path):
    batches = [[ev("u", f"b{b}-{i}", b) for i in range(3)] for b in range(3)]
    proc = run_writer(tmp_path, "crashy", batches, crash=True)
    proc.join(60)
    (segment,) = files(tmp_path, ".arrow")
    whole = segment.stat().st_size
    with open(segment, "r+b") as fh:  # cut the last record batch in the middle
        fh.truncate(whole - 40)
    table, truncated = read_open(segment)
    assert truncated and table.num_rows == 6
    assert read_events(tmp_path)[ITEM_ID].to_pylist() == [
        x["item_id"] for b in batches[:2] for x in b
    ]

    stats = compact(tmp_path)  # the writer is gone: its segment gets sealed
    assert stats["dead_segments_sealed"] == 1 and stats["open_segments_skipped"] == 0
    assert files(tmp_path, ".arrow") == [] and read_events(tmp_path).num_rows == 6

    cut = tmp_path / "schema-only"
    cut.mkdir()
    (cut / segment.name).write_bytes(b"\xff\xff\xff\xff\x10")  # cut inside the schema message
    assert read_events(cut).num_rows == 0


def test_erasure_leaves_no_byte_of_the_user(tmp_path):
    """Erased rows go from sealed segments, a crashed writer's segment and a live one."""
    log_dir = tmp_path / "events"
    mine = [ev(ERASE_ME, f"m{i}", i, context={"device": "tv"}) for i in range(3)]
    theirs = [ev("keep-me", f"k{i}", i) for i in range(3)]
    with EventLog(log_dir, writer="old") as old:  # a sealed segment
        old.append(mine + theirs)
    run_writer(log_dir, "crashed", [mine, theirs], crash=True).join(60)  # a dead open segment
    live = EventLog(log_dir, writer="live", segment_max_age_s=0)
    live.append(theirs + mine)  # a live open segment

    def occurrences() -> list[str]:
        """Files holding the id as raw bytes, or in any decoded value (Parquet pages are
        compressed, so bytes alone could miss it)."""
        found = []
        for path in sorted(p for p in log_dir.rglob("*") if p.is_file()):
            data = path.read_bytes()
            decoded = ""
            if path.suffix == ".parquet" and not path.name.startswith("."):
                decoded = str(pq.read_table(path).to_pylist())
            elif path.suffix == ".arrow":
                decoded = str(read_open(path)[0].to_pylist())
            if ERASE_ME.encode() in data or ERASE_ME in decoded:
                found.append(path.name)
        return found

    assert len(occurrences()) == 3
    tombstone(log_dir, ERASE_ME)
    assert set(read_events(log_dir)[USER_ID].to_pylist()) == {"keep-me"}
    assert read_events(log_dir, include_erased=True).num_rows == 18

    stats = compact(log_dir)
    assert stats["rows_removed"] == 6 and stats["segments_rewritten"] == 1
    assert stats["dead_segments_sealed"] == 1 and stats["open_segments_skipped"] == 1
    assert len(occurrences()) == 1  # the live writer's open segment, still being appended to
    live.seal()  # sealing drops tombstoned users (what every writer does within max age)
    assert occurrences() == []
    assert compact(log_dir)["open_segments_skipped"] == 0
    assert read_events(log_dir).num_rows == 9
    tombstones = pq.read_table(next((log_dir / "tombstones").glob("*.parquet")))
    assert tombstones["user_hash"].to_pylist() == [user_hash(ERASE_ME)]

    live.append([ev(ERASE_ME, "after", 99)])  # events after the erasure are new data
    after = read_events(log_dir)
    assert after.filter(pc.equal(after[USER_ID], ERASE_ME))[ITEM_ID].to_pylist() == ["after"]
    live.close()


def test_rebuild_store_replays_in_time_order(tmp_path):
    log_dir = tmp_path / "events"
    with EventLog(log_dir) as log:
        log.append([ev("u1", "c", 30), ev("u1", "a", 10), ev("u2", "x", 5, "purchase")])
        log.append([ev("u1", "shown", 15, "impression"), ev("u1", "b", 20, "rating")])
        log.append([ev("u1", "d", 40), ev(ERASE_ME, "z", 1)])
    tombstone(log_dir, ERASE_ME)
    with EmbeddedStore(tmp_path / "state.sqlite", max_history=10) as store:
        assert rebuild_store(log_dir, store, max_history=3) == 4
        assert store.histories(["u1", "u2", ERASE_ME], 10) == [["b", "c", "d"], ["x"], []]
    code = main(
        ["events", "rebuild", "--log", str(log_dir), "--store_path", str(tmp_path / "b.sqlite")]
    )
    assert code == 0
    with EmbeddedStore(tmp_path / "b.sqlite") as store:
        assert store.history("u1", 10) == ["a", "b", "c", "d"]
    assert main(["events", "compact", "--log", str(log_dir)]) == 0
    assert main(["events", "rebuild", "--log", str(log_dir), "--store_kind", "redis"]) == 2


def test_prepare_from_the_event_log(tmp_path):
    log_dir = tmp_path / "events"
    with EventLog(log_dir) as log:
        for u in range(5):
            user = ERASE_ME if u == 0 else f"user{u}"
            log.append(
                [
                    ev(user, str(i + u), 1_700_000_000 + 60 * i, context={"device": "mobile"})
                    for i in range(4)
                ]
                + [ev(user, "99", 1_700_000_500, "impression")]
            )
        log.append([ev("user1", "3", 1_700_000_900, "view")])  # no context
    tombstone(log_dir, ERASE_ME)
    items = tmp_path / "items.parquet"  # shaped like a prepared dataset's items.parquet
    pl.DataFrame(
        {"item_idx": range(1, 11), ITEM_ID: range(10), "title": [f"t{i}" for i in range(10)]}
    ).write_parquet(items)
    out = tmp_path / "dataset"
    argv = ["data", "prepare", "--source", f"events:{log_dir}", "--out", str(out)]
    assert main([*argv, "--items", str(items), "--quiet", "true"]) == 0
    users = pl.read_parquet(out / "users.parquet")
    assert sorted(users[USER_ID].to_list()) == ["user1", "user2", "user3", "user4"]
    interactions = pl.read_parquet(out / "interactions.parquet")
    assert interactions.height == 17  # 4 users x 4 interactions + user1's last view
    assert interactions[DEVICE].cast(pl.String).to_list().count("mobile") == 16
    catalogue = pl.read_parquet(out / "items.parquet")
    assert catalogue.columns == ["item_idx", ITEM_ID, "title"] and "99" not in catalogue[ITEM_ID]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"].startswith(f"event log {log_dir}")


def test_no_torch_in_serving_and_no_serving_in_datasets():
    code = (
        "import sys\n"
        "import recstack.datasets.sources.resolve\n"
        "assert not [m for m in sys.modules if m.startswith('recstack.serving')], 'datasets->serving'\n"
        "import recstack.serving.store, recstack.serving.store.seed, recstack.serving.event_log\n"
        "import recstack.serving.events_cmd, recstack.serving.store.redis_store\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'ray')]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
