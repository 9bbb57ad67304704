"""Metrics that add up across processes (serving/metrics.py) and the served-list window."""

import os
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from recstack.serving.served_window import ServedWindow

WORKER = """
import os, sys
from prometheus_client import Counter
from recstack.serving import metrics
Counter("another_library", "not recstack's").inc()  # in the folder too, left out of /metrics
for _ in range(int(sys.argv[1])):
    metrics.REQUESTS.labels("/v1/recommend", "200").inc()
metrics.SERVED_COVERAGE.set(0.25)
if sys.argv[2] == "report":
    sys.stdout.buffer.write(metrics.exposition())
"""


def _run(folder, count: int, report: bool = False) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    command = [sys.executable, "-c", WORKER, str(count), "report" if report else "-"]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout


def _samples(text: str, name: str) -> list:
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def test_one_scrape_sums_every_process_and_forgets_the_gauges_of_dead_ones(tmp_path):
    from recstack.serving import metrics

    with metrics.shared_across_processes(tmp_path):  # as `recstack serve` does for its workers
        _run(tmp_path, 3)
        _run(tmp_path, 4)
        text = _run(tmp_path, 5, report=True)
    assert metrics.SHARED_ENV not in os.environ and tmp_path.is_dir()  # given: kept
    (requests,) = _samples(text, "recstack_requests_total")
    assert requests.value == 3 + 4 + 5 and requests.labels["route"] == "/v1/recommend"
    coverage = _samples(text, "recstack_served_coverage")
    assert len(coverage) == 1  # the two processes that exited are gone, the reporter is not
    assert not _samples(text, "another_library_total")
    assert all(f.name.startswith("recstack_") for f in text_string_to_metric_families(text))


def test_a_new_service_starts_its_counters_at_zero(tmp_path):
    from recstack.serving import metrics

    _run(tmp_path, 7)
    with metrics.shared_across_processes(tmp_path):
        text = _run(tmp_path, 1, report=True)
    assert _samples(text, "recstack_requests_total")[0].value == 1


def test_a_process_without_the_folder_reports_its_own_registry():
    from recstack.serving import metrics

    assert metrics.shared_folder() is None
    assert b"recstack_requests_total" in metrics.exposition()


def test_the_window_counts_distinct_items_of_recent_lists():
    window = ServedWindow(window_s=10)
    window.add(["a", "b"], now=0)
    window.add(["b", "c", "c"], now=5)
    assert window.coverage(10) == 0.3
    window.add(["d"], now=12)  # the list of t=0 leaves the window; "b" stays (t=5)
    assert window.coverage(10) == 0.3
    window.add([], now=30)
    assert window.coverage(10) == 0.0 and window.coverage(0) == 0.0


def test_event_model_versions_are_labels_up_to_a_bound():
    from types import SimpleNamespace

    from recstack.schema import MODEL_VERSION
    from recstack.serving.service import MAX_OTHER_VERSIONS, RecommendService

    replica = SimpleNamespace(versions_served={"sasrec@v1"}, versions_seen=set())

    def label(version):
        return RecommendService._version_label(replica, {MODEL_VERSION: version})

    assert label(None) == "none" and label("sasrec@v1") == "sasrec@v1"
    assert label("sasrec@v2") == "sasrec@v2"  # served by another replica: kept as a label
    junk = [label(f"junk-{n}") for n in range(3 * MAX_OTHER_VERSIONS)]
    assert junk.count("other") == 3 * MAX_OTHER_VERSIONS - (MAX_OTHER_VERSIONS - 1)
    assert label("sasrec@v1") == "sasrec@v1" and label("sasrec@v2") == "sasrec@v2"


GC_WHILE_LOCKED = """
import threading
from prometheus_client import values
from recstack.serving import metrics, timing
closure = [c.cell_contents for c in values.ValueClass.inc.__closure__]
lock = next(c for c in closure if isinstance(c, type(threading.Lock())))
with lock:  # a collection starting while this thread updates a metric
    timing._on_gc("start", {})
    timing._on_gc("stop", {"generation": 2})
timing.record_gc_pauses()
print(sum(bucket.get() for bucket in metrics.GC_PAUSE.labels("2")._buckets))
"""


def test_a_collection_during_a_metric_update_does_not_deadlock(tmp_path):
    """prometheus_client's multiprocess mode has one lock for every value: recording a GC pause
    from inside the collection hung the replica whenever one began during an update."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", GC_WHILE_LOCKED],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert done.stdout.strip() == "1.0"


def test_without_a_folder_given_a_temporary_one_is_used_and_removed():
    from recstack.serving import metrics

    with metrics.shared_across_processes() as folder:
        assert os.environ[metrics.SHARED_ENV] == str(folder) and folder.is_dir()
    assert not folder.exists() and metrics.SHARED_ENV not in os.environ
