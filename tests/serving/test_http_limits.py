"""serving/http_limits.py on a real uvicorn server: a body shorter than its Content-Length
gets a 408 once it stops arriving (it held the request until the client gave up), and the
server goes on answering others."""

import socket
import threading
import time

import pytest
import requests
import uvicorn
from eventually import eventually
from fastapi import FastAPI, Request
from service_config import free_port

from recstack.serving import local_server
from recstack.serving.api import make_api
from recstack.serving.http_limits import BODY_TIMEOUT_S, LimitAndTime
from recstack.serving.http_protocol import HEADER_TIMEOUT_S, KEEP_ALIVE_S, HeaderTimeoutProtocol


class QuickHeaderTimeout(HeaderTimeoutProtocol):
    header_timeout_s = 0.5


@pytest.fixture(scope="module")
def server():
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    app.add_middleware(LimitAndTime, max_body_bytes=1 << 20, body_timeout_s=0.5)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="error", http=QuickHeaderTimeout
    )
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    eventually(lambda: instance.started, timeout_s=30, interval_s=0.02)
    yield port
    instance.should_exit = True
    thread.join(timeout=10)


def test_a_body_shorter_than_its_content_length_gets_a_408(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as conn:
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        conn.sendall(head + b"Content-Length: 100\r\n\r\n" + b'{"a": 1}')
        start = time.monotonic()
        reply = conn.recv(4096).decode()
        waited = time.monotonic() - start
    assert reply.startswith("HTTP/1.1 408") and "Content-Length" in reply, reply
    assert 0.4 < waited < 5, waited
    ok = requests.post(f"http://127.0.0.1:{server}/echo", data=b"x" * 1000, timeout=10)
    assert ok.json() == {"bytes": 1000}


def test_the_service_uses_the_body_timeout():
    limits = [m for m in make_api().user_middleware if m.cls is LimitAndTime]
    assert len(limits) == 1 and BODY_TIMEOUT_S <= 30


def read_reply(conn: socket.socket) -> tuple[str, float]:
    start = time.monotonic()
    reply = conn.recv(4096).decode()
    return reply, time.monotonic() - start


@pytest.mark.parametrize("sent", [b"", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le"])
def test_headers_that_do_not_arrive_get_a_408_and_the_connection_closes(server, sent):
    """A silent connection, or headers cut short (slowloris), is closed after the timeout;
    before the fix such a connection stayed open until the client gave up."""
    with socket.create_connection(("127.0.0.1", server), timeout=10) as conn:
        conn.sendall(sent)
        reply, waited = read_reply(conn)
        assert conn.recv(4096) == b""  # closed by the server
    assert reply.startswith("HTTP/1.1 408") and "headers did not arrive" in reply, reply
    assert 0.4 < waited < 5, waited
    ok = requests.post(f"http://127.0.0.1:{server}/echo", data=b"x" * 10, timeout=10)
    assert ok.json() == {"bytes": 10}


def test_a_kept_alive_connection_gets_the_header_timeout_for_its_next_request(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
        first, _ = read_reply(conn)
        assert first.startswith("HTTP/1.1 200"), first
        conn.sendall(b"POST /echo HTTP/1.1\r\nHo")  # the next request stalls in its headers
        reply, waited = read_reply(conn)
    assert reply.startswith("HTTP/1.1 408") and 0.4 < waited < 5, (reply, waited)


def test_the_uvicorn_engine_uses_the_header_and_keep_alive_timeouts():
    options = local_server.uvicorn_options()
    assert options["http"] is HeaderTimeoutProtocol and HEADER_TIMEOUT_S <= 30
    assert options["timeout_keep_alive"] == KEEP_ALIVE_S
