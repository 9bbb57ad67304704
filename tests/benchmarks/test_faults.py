"""benchmarks/faults.py: its figures from a made-up timeline, its one-line errors, and one short
scenario end to end (Redis frozen for 3 s under 20 req/s on the uvicorn engine)."""

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))  # the scripts import each other by module name
import faults  # noqa: E402
from open_loop import Timeline  # noqa: E402

RATE, DURATION, FAULT_AT, FAULT_S = 20, 12, 3, 3


def made_up_timeline() -> Timeline:
    """10 s at 10 req/s, all recommend calls: 5xx at 3.0-3.9 s, store fallbacks at 4.0-5.4 s,
    one cold user's cold_start at 8.0 s (not the fault's), the rest ok at 5 ms."""
    n, rate = 100, 10
    labels = [f"recommend#{i}" for i in range(n)]
    status = np.full(n, 200, dtype=np.int16)
    status[30:40] = 503
    latency = np.where(status == 200, 5.0, np.nan)
    latency[40:55] = 50.0
    fallbacks = Counter({(f"recommend#{i}", "store_unavailable"): 1 for i in range(40, 55)})
    fallbacks[("recommend#80", "cold_start")] = 1
    return Timeline(
        endpoints=labels,
        endpoint=np.arange(n, dtype=np.int16),
        scheduled_s=np.arange(n) / rate,
        latency_ms=latency,
        status=status,
        fallbacks=fallbacks,
        window_start_unix=1000.0,
    )


def test_figures_of_a_made_up_timeline():
    args = faults.parse_args(["--rate", "10", "--duration", "10", "--fault-s", "2"])
    cold = np.zeros(101, dtype=bool)
    cold[80] = True  # request 80 is for an unseen user: its cold_start is no fault's
    fault = faults.Fault(start=1003.0, end=1005.0)
    out = faults.analyse(made_up_timeline(), cold, fault, "redis_frozen", args)
    assert (out["requests"], out["ok"], out["errors"], out["client_4xx"]) == (100, 90, 10, 0)
    assert out["errors_by_status"] == {"503": 10}
    assert out["fallbacks"] == {"store_unavailable": 15, "cold_start": 1}
    assert out["fault_fallbacks"] == 15 and out["bad"] == 25 and out["bad_before_fault"] == 0
    assert out["recovered"] and out["recovery_s"] == pytest.approx(0.4)  # 5.4 s - the thaw at 5
    assert out["window_s"]["during_until"] == pytest.approx(5.5)
    assert out["latency_ms"]["during"]["p99"] == pytest.approx(50.0)
    assert out["latency_ms"]["outside"]["p99"] == pytest.approx(5.0)
    assert out["errors_during"] == 10 and out["errors_outside"] == 0
    rows = {row["second"]: row for row in out["timeline"]}
    assert rows[3]["errors"] == 10 and rows[4]["fault_fallbacks"] == 10
    assert rows[4]["fallback_share"] == 1.0 and rows[8]["fallback_share"] == 0.0
    # an instant fault (a kill at 3 s) counts recovery from the kill
    kill = faults.analyse(made_up_timeline(), cold, faults.Fault(start=1003.0), "worker_kill", args)
    assert kill["recovery_s"] == pytest.approx(2.4)


def test_bad_requests_to_the_end_are_not_a_recovery():
    args = faults.parse_args(["--rate", "10", "--duration", "10"])
    timeline = made_up_timeline()
    timeline.status[95:] = 0  # no response in the last half second
    out = faults.analyse(timeline, np.zeros(101, dtype=bool), faults.Fault(1003.0), "x", args)
    assert out["recovered"] is False and out["recovery_s"] is None


def test_expected_problems_are_one_line_errors(tmp_path, capsys):
    assert faults.main(["--only", "redis_frozen", "--dataset", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    assert "prepared dataset" in err or "redis-server" in err
    with pytest.raises(SystemExit):
        faults.parse_args(["--only", "redis_frozen,nope"])
    assert "unknown scenario(s) nope" in capsys.readouterr().err


def test_merge_replaces_a_rerun_scenario_and_keeps_both_commands():
    def doc(command, scenarios, soak=None):
        return {
            "command": command,
            "code": {},
            "minutes": 1.0,
            "config": {},
            "machine": {},
            "scenarios": scenarios,
            "soak": soak,
            "failures": {},
        }

    old = doc("a", [{"scenario": "redis_frozen", "engine": "uvicorn", "v": 1}])
    new = doc(
        "b",
        [{"scenario": "worker_kill", "engine": "uvicorn"}, {**old["scenarios"][0], "v": 2}],
        soak=[{"scenario": "soak", "engine": "uvicorn"}],
    )
    merged = faults.merge(old, new)
    assert [r["scenario"] for r in merged["scenarios"]] == ["worker_kill", "redis_frozen"]
    assert merged["scenarios"][1]["v"] == 2 and merged["soak"] == new["soak"]
    assert [r["command"] for r in merged["runs"]] == ["a", "b"]


@pytest.mark.slow  # ~30 s; tests/serving/test_store_outage_load.py covers the same fault
@pytest.mark.integration
def test_a_short_frozen_redis_scenario_end_to_end(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    if not (REPO / "data" / "ml-100k" / "interactions.parquet").is_file():
        pytest.skip("data/ml-100k is not prepared (README: recstack data prepare)")
    if not (REPO / "artifacts" / "sasrec-ml100k" / "v1").is_dir():
        pytest.skip("the ML-100K artifacts of configs/serve_ml100k.yaml are missing")
    out = tmp_path / "faults.json"
    argv = ["--only", "redis_frozen", "--rate", str(RATE), "--duration", str(DURATION)]
    argv += ["--warmup", "3", "--fault-at", str(FAULT_AT), "--fault-s", str(FAULT_S)]
    assert faults.main([*argv, "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["benchmark"] == "faults" and document["failures"] == {}
    assert "faults.py --only redis_frozen" in document["command"]
    assert document["machine"]["cores"] >= 1 and document["code"]["commit"]
    assert set(document["definitions"]) >= {"errors", "recovery_s", "timeline"}
    (r,) = document["scenarios"]
    assert (r["scenario"], r["engine"], r["rate"]) == ("redis_frozen", "uvicorn", RATE)
    assert r["requests"] == RATE * DURATION == r["ok"] + r["errors"] + r["client_4xx"]
    assert r["fault"]["error"] is None
    assert r["fault"]["start_s"] == pytest.approx(FAULT_AT, abs=0.5)
    assert r["fault"]["end_s"] - r["fault"]["start_s"] == pytest.approx(FAULT_S, abs=0.5)
    assert r["errors"] + r["fault_fallbacks"] > 0, "the freeze left no trace"
    assert r["bad_before_fault"] == 0  # a settled service, personalised before the fault
    assert r["recovered"] and 0 <= r["recovery_s"] <= DURATION - FAULT_AT
    for window in ("before", "during", "after", "outside"):
        lat = r["latency_ms"][window]
        assert lat["requests"] > 0 and 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 10_000
    timeline = r["timeline"]
    assert [row["second"] for row in timeline] == list(range(DURATION))
    assert sum(row["sent"] for row in timeline) == r["requests"]
    assert sum(row["errors"] for row in timeline) == r["errors"]
    assert sum(row["fault_fallbacks"] for row in timeline) == r["fault_fallbacks"]
    assert r["readiness"] and r["readiness"][0]["status"] == 200
