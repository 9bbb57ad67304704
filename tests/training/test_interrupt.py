"""Ctrl-C at safe points (training/interrupt.py): a Ctrl-C that lands in a finalizer is kept
for the next batch end instead of being dropped, and a second one raises at once."""

import os
import signal
import time

import pytest

from recstack.training.interrupt import _record, deferred_interrupt, raise_if_requested


@pytest.fixture
def sigint_default():
    """SIGINT as in a terminal (an xdist worker or a background job may have it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class CtrlCInFinalizer:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, inside __del__, where a raise is dropped


def test_a_ctrl_c_in_a_finalizer_is_kept_for_the_next_safe_point(sigint_default):
    with deferred_interrupt():
        assert signal.getsignal(signal.SIGINT) is _record
        CtrlCInFinalizer()  # collected at once
        with pytest.raises(KeyboardInterrupt):
            raise_if_requested()
        with pytest.raises(KeyboardInterrupt):  # the second Ctrl-C: at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    raise_if_requested()  # the request ended with the block


def test_nested_blocks_share_the_request_and_ignored_sigint_stays_ignored(sigint_default):
    with deferred_interrupt():
        with deferred_interrupt():
            CtrlCInFinalizer()
        with pytest.raises(KeyboardInterrupt):
            raise_if_requested()  # the inner block's exit kept the outer request
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # nohup, a background job
    with deferred_interrupt():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
