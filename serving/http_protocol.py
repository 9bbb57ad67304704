"""uvicorn's httptools protocol with a limit on the time a request's headers may take.

uvicorn bounds the idle time between requests (`timeout_keep_alive`) and http_limits.py
bounds the body, but nothing bounds the headers: a client that connects and sends nothing,
or sends its headers a byte at a time (slowloris), holds a connection for ever. Here a
request's headers must be complete HEADER_TIMEOUT_S after the connection opens or the request
begins; otherwise the client gets 408 and the connection closes.

Used by the uvicorn engine (local_server.py: `http=` names this class). On the Ray engine
HAProxy bounds them (ray_runtime.py sets its client timeout).
"""

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_S = 10.0  # connect (or a request's first byte) -> end of its headers
KEEP_ALIVE_S = 5  # idle time between two requests on one connection (uvicorn's own timer)


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps({"error": f"the request headers did not arrive within {seconds:g} s"})
    return (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()


class HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout_s = HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(_timeout_response(self.header_timeout_s))
            self.transport.close()
