"""Process lifecycle of `recstack serve`: uvicorn workers die with their parent, even one
killed with kill -9 (the port is free for a restart); SIGTERM stops either engine like Ctrl-C,
with each writer's event-log segment sealed and no Ray process left behind."""

import os
import signal
import socket

import psutil
import pytest
import requests
from eventually import eventually
from service_config import APP, ray_temp_dir, start_serve

from recstack.event_log_format import segment_files
from recstack.serving.event_log import read_events

pytestmark = pytest.mark.integration


def post_events(base: str, user: str, n: int) -> None:
    for i in range(n):  # one at a time: both workers / replicas get some
        event = {"user_id": user, "item_id": str(1 + i), "type": "view", "ts": 1_900_000_000 + i}
        response = requests.post(
            f"{base}/v1/events", json={"events": [event]}, headers=APP, timeout=30
        )
        assert response.status_code == 202, response.text


def port_is_free(base: str) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a restarted server does
        try:
            sock.bind(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        except OSError:
            return False
    return True


def cmdline(process: psutil.Process) -> str:
    """Its command line, or "" for a child that has already exited (a zombie until reaped)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def test_uvicorn_workers_die_with_a_parent_killed_with_kill_9(tmp_path, ml100k_artifacts):
    options = ("--engine", "uvicorn", "--workers", "2")
    server, base = start_serve(tmp_path, ml100k_artifacts, *options, ready_s=120)
    workers = psutil.Process(server.pid).children(recursive=True)
    assert len([w for w in workers if "multiprocessing" in cmdline(w)]) >= 2
    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    eventually(
        lambda: not [w for w in workers if w.is_running() and w.status() != "zombie"],
        timeout_s=20,
        message="workers outlive their parent",
        ignoring=(psutil.NoSuchProcess,),  # one that exits between the two reads
    )
    eventually(lambda: port_is_free(base), timeout_s=10, message="a worker still holds the port")


@pytest.mark.parametrize("engine", ["uvicorn", "ray"])
def test_sigterm_stops_gracefully_and_seals_the_event_log(tmp_path, ml100k_artifacts, engine):
    cwd = ray_temp_dir()  # Ray's runs/ray under a short path (socket names fit)
    args = ("--engine", "uvicorn", "--workers", "2") if engine == "uvicorn" else ()
    server, base = start_serve(tmp_path, ml100k_artifacts, *args, cwd=cwd, ready_s=120)
    events = tmp_path / "state" / "events"
    post_events(base, f"sigterm-{engine}", 12)
    assert segment_files(events)[1], "the events sit in open segments while serving"
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0
    sealed, opened = segment_files(events)
    assert sealed and not opened, (sealed, opened)
    assert len(read_events(events)) == 12
    left = [
        p for p in psutil.process_iter(["cmdline"]) if str(cwd) in " ".join(p.info["cmdline"] or [])
    ]
    assert not left, [" ".join(p.info["cmdline"])[:120] for p in left]
    assert port_is_free(base)
