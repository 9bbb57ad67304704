"""The one backend surface: LocalBackend and RayBackend each implement every call of
`Backend` themselves, with its parameters, async where it is async."""

import inspect

import pytest

from recstack.serving.app import RayBackend
from recstack.serving.backend import Backend, LocalBackend

CALLS = [n for n, v in vars(Backend).items() if inspect.isfunction(v) and not n.startswith("_")]


def test_the_protocol_lists_the_service_calls():
    assert set(CALLS) == {
        "retrieve",
        "rank",
        "popular",
        "similar",
        "unknown_items",
        "info",
        "user_artifacts",
        "close",
    }


@pytest.mark.parametrize("backend", [LocalBackend, RayBackend], ids=lambda c: c.__name__)
def test_backend_implements_every_call(backend):
    for name in CALLS:
        declared, own = getattr(Backend, name), vars(backend).get(name)
        assert own is not None, f"{backend.__name__}.{name} is missing"
        assert inspect.iscoroutinefunction(own) == inspect.iscoroutinefunction(declared), name
        expected = list(inspect.signature(declared).parameters)
        assert list(inspect.signature(own).parameters) == expected, name
