"""Wait for a condition in tests: poll `check` until it returns something truthy, and fail
with `message` (and the last value seen) once `timeout_s` has passed.

    body = eventually(lambda: ready(url), timeout_s=30, message="never ready")
    row = await eventually_async(fetch_row)

`check` may also fail an assert, or raise one of `ignoring` (e.g. a connection refused while a
server starts): that counts as not yet, and the last such error is in the timeout's message.
The result is `check`'s first truthy return value."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class _Deadline:
    def __init__(self, timeout_s: float, message: str) -> None:
        self.end = time.monotonic() + timeout_s
        self.timeout_s, self.message = timeout_s, message

    def check(self, last: object) -> None:
        assert time.monotonic() < self.end, (
            f"{self.message} (after {self.timeout_s:g} s; last: {last!r})"
        )


def eventually(
    check: Callable[[], T],
    timeout_s: float = 20.0,
    interval_s: float = 0.05,
    message: str = "the condition never held",
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    deadline = _Deadline(timeout_s, message)
    while True:
        try:
            last = check()
        except (AssertionError, *ignoring) as exc:
            last = exc
        else:
            if last:
                return last
        deadline.check(last)
        time.sleep(interval_s)


async def eventually_async(
    check: Callable[[], Awaitable[T]],
    timeout_s: float = 20.0,
    interval_s: float = 0.02,
    message: str = "the condition never held",
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    deadline = _Deadline(timeout_s, message)
    while True:
        try:
            last = await check()
        except (AssertionError, *ignoring) as exc:
            last = exc
        else:
            if last:
                return last
        deadline.check(last)
        await asyncio.sleep(interval_s)
