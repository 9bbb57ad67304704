"""`recstack experiments report`: an event log and a serve config in, the tables, JSON and
PNG out; /metrics read with the operator key, or guardrails reported as unavailable."""

import http.server
import json
import threading

import matplotlib.image
import pytest
from experiment_logs import exposition
from service_config import free_port

from recstack.cli import main
from recstack.serving.event_log import EventLog
from recstack.serving.experiments import assign, load_experiment

KEY = "models-key-for-the-report-cli-0123"
SERVE_CONFIG = """\
applications:
  - name: recstack
    import_path: recstack.serving.app:app
    args:
      experiment:
        name: homepage
        salt: "2024-q1"
        arms:
          - {name: a0, kind: popularity, weight: 1}
          - {name: a1, kind: model, model: sasrec-v3, weight: 1}
"""


@pytest.fixture
def world(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text(SERVE_CONFIG)
    exp = load_experiment(config)
    log = tmp_path / "events"
    rows = []
    for u in range(40):
        user, request = f"user{u}", f"req{u}"
        arm = assign(exp, user).name
        ev = {"user_id": user, "ts": 1_900_000_000, "arm": arm, "request_id": request}
        rows += [{**ev, "item_id": str(i), "type": "impression"} for i in range(5)]
        if u % 3 == 0:
            rows.append({**ev, "item_id": "1", "type": "click"})
        if u % 5 == 0:
            rows.append({**ev, "item_id": "1", "type": "purchase", "value": 10.0 + u})
    with EventLog(log, writer="test") as writer:
        writer.append(rows)
    return {"config": config, "log": log, "root": tmp_path}


@pytest.fixture
def metrics_url():
    """A /metrics that answers the Bearer KEY with an exposition, anything else with 401."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.headers.get("Authorization") == f"Bearer {KEY}"
            body = exposition() if ok else b'{"error": "unknown API key"}'
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    thread.join(timeout=10)


def run(world, *extra: str) -> int:
    argv = ["experiments", "report", "--log", str(world["log"]), "--serve_config"]
    return main([*argv, str(world["config"]), *extra])


def test_json_png_and_guardrails_from_metrics(world, metrics_url, monkeypatch, capsys):
    monkeypatch.setenv("RECSTACK_MODELS_KEY", KEY)
    out, png = world["root"] / "report.json", world["root"] / "report.png"
    assert (
        run(world, "--metrics_url", metrics_url, "--json_out", str(out), "--png_out", str(png)) == 0
    )
    report = json.loads(out.read_text())
    assert report["experiment"] == "homepage" and report["control"] == "a0"
    arms = report["arms"]
    assert sum(arm["users"] for arm in arms.values()) == 40
    assert sum(arm["clicks"] for arm in arms.values()) == 14
    assert sum(arm["value"] for arm in arms.values()) == sum(10.0 + u for u in range(0, 40, 5))
    assert report["guardrails"] == {"available": True, "source": metrics_url, "note": None}
    assert arms["a0"]["guardrails"]["p99_latency_s"] == pytest.approx(0.02)
    assert report["over_time"]["bucket"] == "hour" and len(report["over_time"]["points"]) == 1
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 300
    text = " ".join(capsys.readouterr().err.split())  # the CLI's console writes to stderr
    assert "CTR in %" in text and "20.0 ms" in text and "SRM (users vs weights" in text


@pytest.mark.parametrize(
    ("key", "url", "says"),
    [
        (None, "metrics", "set RECSTACK_MODELS_KEY to a models-scope API key"),
        ("wrong-key-wrong-key-wrong", "metrics", "answered 401"),
        (KEY, "closed", "does not answer"),
    ],
    ids=["no-key", "wrong-key", "unreachable"],
)
def test_guardrails_are_unavailable_when_metrics_cannot_be_read(
    world, metrics_url, monkeypatch, capsys, key, url, says
):
    if key is None:
        monkeypatch.delenv("RECSTACK_MODELS_KEY", raising=False)
    else:
        monkeypatch.setenv("RECSTACK_MODELS_KEY", key)
    target = metrics_url if url == "metrics" else f"http://127.0.0.1:{free_port()}/metrics"
    out = world["root"] / "report.json"
    assert run(world, "--metrics_url", target, "--json_out", str(out)) == 0
    guard = json.loads(out.read_text())["guardrails"]
    assert guard["available"] is False and says in guard["note"], guard
    assert "guardrails: unavailable" in capsys.readouterr().err


def test_an_empty_log_says_so_and_a_missing_one_is_one_line(world, capsys):
    world["log"] = world["root"] / "empty"
    world["log"].mkdir()
    png = world["root"] / "empty.png"
    assert run(world, "--png_out", str(png)) == 0
    assert "the event log holds no events" in " ".join(capsys.readouterr().err.split())
    assert png.stat().st_size > 0
    world["log"] = world["root"] / "missing"
    assert run(world) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "missing" in err and len(err.splitlines()) == 1
