"""benchmarks/suite_time.py: the suite's time per module and its serial unit, from JUnit XML;
benchmarks/suite_cpu.py: the tests' CPU seconds in that XML."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from bench_script import BENCHMARKS, load_script

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
    bad_cpu = '<properties><property name="cpu_own_s" value="x"/></properties>'
    (tmp_path / "bad.xml").write_text(
        JUNIT.replace('time="2.0"/>', f'time="2.0">{bad_cpu}</testcase>')
    )
    with pytest.raises(SystemExit, match="a figure is not a number"):
        suite_time.main(["bad.xml"])


def test_cpu_per_module_where_the_run_recorded_it(suite_time, tmp_path):
    cpu = (
        '<properties><property name="cpu_own_s" value="{}"/>'
        '<property name="cpu_children_s" value="{}"/></properties>'
    )
    junit = JUNIT.replace('time="4.0"/>', f'time="4.0">{cpu.format(0.5, 3.0)}</testcase>')
    junit = junit.replace('time="0.5"/>', f'time="0.5">{cpu.format(0.25, 0)}</testcase>')
    other = '<properties><property name="ticket" value="RS-12"/></properties>'  # another plugin's
    junit = junit.replace('time="2.0"/>', f'time="2.0">{other}</testcase>')
    (tmp_path / "junit.xml").write_text(junit)
    suite_time.main(["junit.xml", "--out", "out.json"])
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["cpu"] == {
        "own_s": 0.8,  # 0.75, rounded
        "children_s": 3.0,
        "total_s": 3.8,
        "modules": {
            "tests/serving/test_colocated.py": {"own_s": 0.5, "children_s": 3.0},
            "tests/test_cli.py": {"own_s": 0.2, "children_s": 0.0},
        },
    }
    (tmp_path / "junit.xml").write_text(JUNIT)  # no properties: no cpu section
    suite_time.main(["junit.xml", "--out", "out.json"])
    assert "cpu" not in json.loads((tmp_path / "out.json").read_text())


def test_the_plugin_counts_the_test_process_and_its_waited_children(tmp_path):
    spin = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    (tmp_path / "spin.py").write_text(spin)  # 0.3 s of CPU
    (tmp_path / "test_burn.py").write_text(
        "import runpy, subprocess, sys\n"
        f"def test_own(): runpy.run_path({str(tmp_path / 'spin.py')!r})\n"
        f"def test_child(): subprocess.run([sys.executable, {str(tmp_path / 'spin.py')!r}])\n"
    )
    junit = tmp_path / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
               "benchmarks.suite_cpu", f"--junitxml={junit}", str(tmp_path / "test_burn.py")]  # fmt: skip
    done = subprocess.run(command, cwd=BENCHMARKS.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    cpu = {
        case.get("name"): {p.get("name"): float(p.get("value")) for p in case.iter("property")}
        for case in ET.parse(junit).getroot().iter("testcase")
    }
    assert cpu["test_own"]["cpu_own_s"] >= 0.3 and cpu["test_own"]["cpu_children_s"] == 0
    assert cpu["test_child"]["cpu_children_s"] >= 0.3 and cpu["test_child"]["cpu_own_s"] < 0.3
