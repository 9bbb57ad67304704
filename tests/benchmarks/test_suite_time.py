"""benchmarks/suite_time.py: the suite's time per module and its serial unit, from JUnit XML."""

import json

import pytest
from bench_script import load_script

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="12.5">
<testcase classname="tests.serving.test_colocated" name="test_a" time="4.0"/>
<testcase classname="tests.serving.test_colocated" name="test_b" time="2.0"/>
<testcase classname="tests.test_cli" name="test_c" time="1.5"><failure message="x"/></testcase>
<testcase classname="tests.test_cli.TestGroup" name="test_d" time="0.5"/>
</testsuite></testsuites>"""


@pytest.fixture
def suite_time(monkeypatch, tmp_path):
    module = load_script("suite_time")
    for path in ("tests/serving/test_colocated.py", "tests/test_cli.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    monkeypatch.chdir(tmp_path)  # module_of finds test files from the repository root
    return module


def test_times_per_module_and_the_serial_unit(suite_time, tmp_path):
    (tmp_path / "junit.xml").write_text(JUNIT)
    suite_time.main(["junit.xml", "--out", "out.json"])
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["wall_s"] == 12.5 and result["tests"] == 4 and result["failures"] == 1
    assert result["test_time_s"] == 8.0
    assert result["serial_unit_s"] == 6.0 and result["rest_s"] == 2.0  # colocated runs Ray
    assert result["modules"] == {"tests/serving/test_colocated.py": 6.0, "tests/test_cli.py": 2.0}
    assert result["slowest_tests"][0] == {
        "test": "tests/serving/test_colocated.py::test_a",
        "s": 4.0,
    }


def test_a_missing_or_foreign_file_is_one_line(suite_time, tmp_path):
    with pytest.raises(SystemExit, match="not found: run pytest with --junitxml"):
        suite_time.main(["nothing.xml"])
    (tmp_path / "bad.xml").write_text("not xml")
    with pytest.raises(SystemExit, match="is not JUnit XML"):
        suite_time.main(["bad.xml"])
