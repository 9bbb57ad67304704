"""The tests' polling helper: the first truthy value, not-yet errors, and a bounded wait."""

import asyncio
import itertools

import pytest
from eventually import eventually, eventually_async


def test_the_first_truthy_value_comes_back_after_failed_asserts_and_ignored_errors():
    calls = itertools.count()

    def check():
        n = next(calls)
        if n == 0:
            raise ConnectionError("not listening yet")
        assert n >= 2, "not yet"
        return n

    assert eventually(check, timeout_s=5, interval_s=0, ignoring=(ConnectionError,)) == 2


def test_a_condition_that_never_holds_fails_with_its_message_and_last_value():
    with pytest.raises(AssertionError, match=r"never ready \(after 0.1 s; last: 0\)"):
        eventually(lambda: 0, timeout_s=0.1, interval_s=0.01, message="never ready")


def test_an_error_not_ignored_propagates_at_once():
    with pytest.raises(ValueError):
        eventually(lambda: int("x"), timeout_s=5)


def test_the_async_form_awaits_the_check():
    calls = itertools.count()

    async def check():
        return next(calls) == 3

    assert asyncio.run(eventually_async(check, timeout_s=5, interval_s=0)) is True
    with pytest.raises(AssertionError, match="still open"):
        asyncio.run(eventually_async(check, timeout_s=0.05, message="still open"))
