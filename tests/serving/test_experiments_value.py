"""An event's `value` (a purchase amount): checked at the HTTP edge (422 naming the field),
written to the log, and logs written before the column existed still read everywhere."""

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import requests
import uvicorn
from eventually import eventually
from service_config import APP_KEY, MODELS_KEY, free_port
from tiny_data import prepared_log

from recstack.cli import main
from recstack.datasets.extend import extend
from recstack.errors import DataError
from recstack.event_log_format import (
    EVENT_SCHEMA,
    MAX_EVENT_VALUE,
    SegmentName,
    read_sealed,
    this_host,
)
from recstack.schema import VALUE
from recstack.serving import api
from recstack.serving.auth import ApiKeys
from recstack.serving.event_log import (
    EventLog,
    compact,
    event_batch,
    read_events,
    rebuild_store,
    tombstone,
)
from recstack.serving.experiment_report import experiment_report
from recstack.serving.experiments import Arm, Experiment, assign
from recstack.serving.service import RecommendService, ServiceSettings
from recstack.serving.store.embedded import EmbeddedStore

EXPERIMENT = Experiment(
    name="e",
    salt="s",
    arms=[Arm(name="pop", kind="popularity", weight=1), Arm(name="m", kind="model", model="main", weight=1)],
)  # fmt: skip
APP = {"Authorization": f"Bearer {APP_KEY}"}
MODELS = {"Authorization": f"Bearer {MODELS_KEY}"}


class NoModels:
    """The backend of a service that is only sent events and asked for its report."""

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """The real API app and service logic on uvicorn (in a thread), without models."""
    root = tmp_path_factory.mktemp("value")
    env = {"RECSTACK_APP_KEYS": APP_KEY, "RECSTACK_MODELS_KEYS": MODELS_KEY}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.delenv("RECSTACK_API_KEYS_FILE", raising=False)
        patch.setattr(api, "_STATE", {})
        service = RecommendService(
            NoModels(),
            EmbeddedStore(root / "state.sqlite"),
            EventLog(root / "events", writer="test"),
            EXPERIMENT,
            ServiceSettings(),
        )
        api.attach(service, ApiKeys.from_environment())
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(api.make_api(), host="127.0.0.1", port=port, log_level="error")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        eventually(lambda: server.started, timeout_s=30, interval_s=0.02)
        yield {"url": f"http://127.0.0.1:{port}", "log": root / "events"}
        server.should_exit = True  # the app's shutdown closes the service (seals the log)
        thread.join(timeout=30)


def post_events(url: str, events: list[dict]) -> requests.Response:
    # json.dumps writes NaN and Infinity as JSON's non-standard tokens, as a careless client would
    body = json.dumps({"events": events})
    headers = {**APP, "Content-Type": "application/json"}
    return requests.post(f"{url}/v1/events", data=body, headers=headers, timeout=10)


def purchase(user: str, value, request_id: str = "r1") -> dict:
    return {"user_id": user, "item_id": "7", "type": "purchase", "ts": 1_900_000_000,
            "request_id": request_id, "value": value}  # fmt: skip


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (math.nan, "finite number"),
        (math.inf, "finite number"),
        (-math.inf, "finite number"),
        (-0.01, "greater than or equal to 0"),
        (MAX_EVENT_VALUE * 10, "less than or equal to 1000000000"),
        (1e400, "finite number"),  # parses as inf
        (True, "valid number"),
        ("12.5", "valid number"),
    ],
    ids=["nan", "inf", "-inf", "negative", "huge", "overflow", "bool", "string"],
)
def test_a_bad_value_is_a_422_naming_the_field(url, value, says):
    response = post_events(url["url"], [purchase("u1", 1.0), purchase("u1", value)])
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "events.1.value" in error and says in error, error
    assert "Traceback" not in response.text


def test_values_reach_the_log_and_the_report(url):
    buyer = next(f"buyer{i}" for i in range(100) if assign(EXPERIMENT, f"buyer{i}").name == "m")
    shown = {"user_id": buyer, "item_id": "7", "type": "impression", "ts": 1_900_000_000,
             "request_id": "r1"}  # fmt: skip
    events = [shown, purchase(buyer, 12.5), purchase(buyer, 0), purchase(buyer, None)]
    assert post_events(url["url"], events).status_code == 202
    table = read_events(url["log"])
    rows = table.filter(pc.equal(table["user_id"], buyer))
    assert rows[VALUE].to_pylist() == [None, 12.5, 0.0, None]
    report = requests.get(f"{url['url']}/v1/experiments/report", headers=MODELS, timeout=10)
    assert report.status_code == 200, report.text
    arm = report.json()["arms"]["m"]
    assert (arm["users"], arm["purchases"], arm["value"], arm["value_per_user"]) == (
        1,
        3,
        12.5,
        12.5,
    )
    assert report.json()["guardrails"]["available"] is True  # the service's own exposition


def test_the_writer_refuses_what_the_api_would():
    good = {"user_id": "u", "item_id": "i", "type": "purchase", "ts": 1}
    assert event_batch([{**good, "value": 3}], 0).column(VALUE).to_pylist() == [3.0]
    for bad in (math.nan, -1, MAX_EVENT_VALUE * 2, True, "3"):
        with pytest.raises(DataError, match="value must be a finite number"):
            event_batch([{**good, "value": bad}], 0)


# --- logs from before the `value` column ------------------------------------------------------

OLD_SCHEMA = pa.schema([f for f in EVENT_SCHEMA if f.name != VALUE], metadata=EVENT_SCHEMA.metadata)


def old_rows(users: list[str], received_at: int) -> pa.Table:
    rows = [
        {"user_id": u, "item_id": str(i), "type": kind, "ts": 200 + i, "received_at": received_at,
         "arm": "m", "model_version": None, "request_id": f"{u}-r", "context": None}
        for u in users
        for i, kind in ((1, "impression"), (1, "click"), (2, "view"))
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=OLD_SCHEMA)


def dead_pid() -> int:
    """The pid of a process that has exited (its writer is surely gone)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)  # exited and reaped by now


@pytest.fixture
def mixed_log(tmp_path) -> Path:
    """A log with an old sealed segment, an old open segment of a dead writer, and new rows."""
    log = tmp_path / "events"
    log.mkdir()
    sealed = SegmentName(1_000_000_000_000, 1, this_host(), "old", "aaaaaa").stem
    pq.write_table(old_rows(["u1", "u2"], 1_000), log / f"{sealed}.parquet")
    opened = SegmentName(1_000_000_000_001, dead_pid(), this_host(), "old", "bbbbbb").stem
    with pa.OSFile(str(log / f"{opened}.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, OLD_SCHEMA) as stream:
            stream.write_table(old_rows(["u3"], 2_000))
    with EventLog(log, writer="new") as writer:
        writer.append(
            [{"user_id": "u1", "item_id": "1", "type": "purchase", "ts": 300, "arm": "m",
              "request_id": "u1-r", "value": 20.0}]
        )  # fmt: skip
    return log


def test_old_segments_read_with_a_null_value(mixed_log):
    table = read_events(mixed_log)
    assert table.schema.equals(EVENT_SCHEMA, check_metadata=False)
    assert table.num_rows == 10
    values = dict(zip(table["type"].to_pylist(), table[VALUE].to_pylist(), strict=False))
    assert values["purchase"] == 20.0 and table[VALUE].null_count == 9
    report_arm = experiment_report(table)["arms"]["m"]
    assert (report_arm["users"], report_arm["clicks"], report_arm["value"]) == (3, 3, 20.0)


def test_old_segments_feed_prepare_extend_and_rebuild(mixed_log, tmp_path):
    out = tmp_path / "from_events"
    argv = ["data", "prepare", "--source", f"events:{mixed_log}", "--out", str(out)]
    assert main([*argv, "--quiet", "true"]) == 0
    assert pl.read_parquet(out / "interactions.parquet").height == 7  # 3 users x 2 + a purchase

    base = prepared_log(tmp_path, ["u1", "u2", "u4"], ["1", "5", "6"], [100, 110, 120])
    manifest = extend(base, mixed_log, tmp_path / "v2", quiet=True)
    assert manifest["parents"]["counts"]["events_read"] == 10
    assert manifest["parents"]["counts"]["events_added"] == 7

    store = EmbeddedStore(tmp_path / "state.sqlite")
    try:
        assert rebuild_store(mixed_log, store, 50) == 7
        assert store.history("u1", 10) == ["1", "2", "1"]
    finally:
        store.close()


def test_compaction_rewrites_old_segments_in_the_new_schema(mixed_log):
    tombstone(mixed_log, "u2")  # a user of the old sealed segment
    stats = compact(mixed_log)
    assert stats["segments_rewritten"] == 1 and stats["dead_segments_sealed"] == 1
    assert not list(mixed_log.glob("*.arrow"))
    for path in mixed_log.glob("*.parquet"):  # rewritten, sealed or new: all with the column
        assert VALUE in pq.read_schema(path).names, path.name
        read_sealed(path)
    table = read_events(mixed_log)
    assert sorted(set(table["user_id"].to_pylist())) == ["u1", "u3"]
    assert table[VALUE].drop_null().to_pylist() == [20.0]
