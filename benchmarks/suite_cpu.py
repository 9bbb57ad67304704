"""pytest plugin: each test's CPU time, written into the JUnit XML for suite_time.py.

    bash tests/run.sh -p benchmarks.suite_cpu --junitxml=/tmp/suite.xml
    .venv/bin/python benchmarks/suite_time.py /tmp/suite.xml

Per test (setup, call and teardown), two JUnit properties: `cpu_own_s`, the CPU seconds of
the process that ran it (an xdist worker), and `cpu_children_s`, those of the child processes
it started and waited for (`recstack train` subprocesses, torchrun, a uvicorn server it
stopped). Processes it did not wait for are not counted: Ray's daemons and replicas, and a
child killed and reaped by someone else.
"""

import resource

import pytest

_KEY = pytest.StashKey[tuple[float, float]]()


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_KEY] = _cpu()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # the teardown report is the last; its user_properties go into the JUnit XML
    if call.when == "teardown" and _KEY in item.stash:
        (own0, children0), (own1, children1) = item.stash[_KEY], _cpu()
        item.user_properties.append(("cpu_own_s", round(own1 - own0, 3)))
        item.user_properties.append(("cpu_children_s", round(children1 - children0, 3)))
    yield
