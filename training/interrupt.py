"""Ctrl-C at safe points.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT arrives.
Inside a weakref callback or a `__del__`, which torch code runs all the time, the exception is
printed as "ignored" and dropped, so a study or a run went on as if nothing was pressed. While
`deferred_interrupt()` is active, the first Ctrl-C only records the request:
`InterruptAtBatchEnd` raises KeyboardInterrupt at the next batch boundary (Lightning's own
Ctrl-C handling then stops the fit), and the caller checks `raise_if_requested()` between its
steps. A second Ctrl-C raises at once, wherever the program is.
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.callbacks import Callback

_requested = threading.Event()


def _record(signum, frame) -> None:
    if _requested.is_set():
        raise KeyboardInterrupt
    _requested.set()


def raise_if_requested() -> None:
    if _requested.is_set():
        raise KeyboardInterrupt


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Defer Ctrl-C to safe points for the block. Nested blocks share the outer one's request.
    Nothing changes where SIGINT is ignored (nohup, a background job) or off the main thread."""
    current = signal.getsignal(signal.SIGINT)
    if (
        current in (_record, signal.SIG_IGN)
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    _requested.clear()
    signal.signal(signal.SIGINT, _record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, current)  # Lightning leaves it ignored after a Ctrl-C
        _requested.clear()


class InterruptAtBatchEnd(Callback):
    """Raise a deferred Ctrl-C after the batch that was running when it came."""

    def on_train_batch_end(self, *args, **kwargs) -> None:
        raise_if_requested()

    def on_validation_batch_end(self, *args, **kwargs) -> None:
        raise_if_requested()

    def on_train_epoch_end(self, *args, **kwargs) -> None:
        raise_if_requested()
