"""ASGI middleware: refuse bodies over a size limit (413) or that stop arriving (408: a
Content-Length larger than the body sent would otherwise hold the request until the client
gives up), and time every request for /metrics (and, on the first request, start the
event-loop lag probe of serving/timing.py).

A plain ASGI wrapper rather than FastAPI's `@app.middleware("http")`, which costs about a
millisecond per request on a 2-core machine. The limit holds for chunked bodies too: the
body is counted as it is received, not only by its Content-Length header.
"""

import asyncio
import time

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from recstack.serving import metrics
from recstack.serving.timing import watch_event_loop


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTPExceptions through to the API's
    handler, which answers 413 with the message."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {seconds:g} s: send a body as long as "
            "its Content-Length",
            headers={"Connection": "close"},
        )


BODY_TIMEOUT_S = 10.0  # from one body chunk to the next


class LimitAndTime:
    def __init__(self, app, max_body_bytes: int, body_timeout_s: float | None = None) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes
        self.body_timeout_s = body_timeout_s or BODY_TIMEOUT_S

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch_event_loop()
        start, status, received, started = time.perf_counter(), 500, 0, False
        length = dict(scope["headers"]).get(b"content-length", b"0")
        body_done = False

        async def counted_receive():
            nonlocal received, body_done
            if body_done:  # after the body: Starlette waits for a disconnect, untimed
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.body_timeout_s) from None
            body_done = not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            return message

        async def tracked_send(message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            if not length.isdigit() or int(length) > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:
            if started:
                raise
            response = JSONResponse({"error": exc.detail}, status_code=413)
            await response(scope, receive, tracked_send)
        route = getattr(scope.get("route"), "path", "unmatched")
        metrics.REQUESTS.labels(route, str(status)).inc()
        metrics.LATENCY.labels(route).observe(time.perf_counter() - start)
