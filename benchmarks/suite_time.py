"""Where the default test suite's time goes, from the JUnit XML of one run.

    bash tests/run.sh --junitxml=/tmp/suite.xml
    .venv/bin/python benchmarks/suite_time.py /tmp/suite.xml --out benchmarks/results/suite_time.json

It reports the run's wall time, the summed time of every test (setup and teardown included),
the time of the serial unit (tests/ray_modules.py: the modules that run on one xdist worker, in
turn, which bound the wall time from below) and the slowest modules and tests. Where the run
loaded benchmarks/suite_cpu.py (`bash tests/run.sh -p benchmarks.suite_cpu --junitxml=...`),
it adds the CPU seconds of the tests, in total and per module: the suite is CPU-bound on a
small machine, so its wall time cannot drop below the CPU it spends divided by the cores.
"""

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ray_modules import SERIAL_MODULES


def module_of(classname: str) -> str:
    """tests/serving/test_x.py from the JUnit classname tests.serving.test_x[.Class]."""
    parts = classname.split(".")
    for end in range(len(parts), 0, -1):
        path = "/".join(parts[:end]) + ".py"
        if Path(path).exists():
            return path
    return classname


def summary(junit: Path, top: int = 15) -> dict:
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        raise SystemExit(f"error: {junit} has no <testsuite>: pass pytest's --junitxml file")
    cases = list(suite.iter("testcase"))
    tests = [
        (module_of(case.get("classname", "")), case.get("name", ""), float(case.get("time", 0)))
        for case in cases
    ]
    by_module: dict[str, float] = defaultdict(float)
    for module, _, seconds in tests:
        by_module[module] += seconds
    serial = sum(s for m, s in by_module.items() if m in SERIAL_MODULES)
    total = sum(by_module.values())
    ranked = sorted(by_module.items(), key=lambda kv: -kv[1])
    result = {
        "junit": str(junit),
        "wall_s": round(float(suite.get("time", 0)), 1),
        "tests": len(tests),
        "failures": int(suite.get("failures", 0)) + int(suite.get("errors", 0)),
        "skipped": int(suite.get("skipped", 0)),
        "test_time_s": round(total, 1),
        "serial_unit_s": round(serial, 1),
        "rest_s": round(total - serial, 1),
        "modules": {m: round(s, 1) for m, s in ranked[:top]},
        "slowest_tests": [
            {"test": f"{m}::{n}", "s": round(s, 1)}
            for m, n, s in sorted(tests, key=lambda t: -t[2])[:top]
        ],
    }
    cpu = cpu_summary(cases, [module for module, _, _ in tests], top)
    return result | ({"cpu": cpu} if cpu else {})


def cpu_summary(cases: list[ET.Element], modules: list[str], top: int) -> dict | None:
    """CPU seconds per module from suite_cpu.py's properties (None: the run did not record
    them): the tests' own (their xdist worker's) and their waited-for children's."""
    by_module: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for case, module in zip(cases, modules, strict=True):
        found = {p.get("name"): p.get("value") for p in case.iter("property")}  # any plugin's
        if "cpu_own_s" in found:
            by_module[module][0] += float(found["cpu_own_s"])
            by_module[module][1] += float(found.get("cpu_children_s", 0.0))
    if not by_module:  # no test carried the properties
        return None
    ranked = sorted(by_module.items(), key=lambda kv: -sum(kv[1]))
    own = sum(o for o, _ in by_module.values())
    children = sum(c for _, c in by_module.values())
    return {
        "own_s": round(own, 1),
        "children_s": round(children, 1),
        "total_s": round(own + children, 1),
        "modules": {
            m: {"own_s": round(o, 1), "children_s": round(c, 1)} for m, (o, c) in ranked[:top]
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit", type=Path, help="pytest's --junitxml file of one suite run")
    parser.add_argument("--out", type=Path, help="write the summary here as JSON")
    parser.add_argument("--top", type=int, default=15, help="how many modules and tests to list")
    args = parser.parse_args(argv)
    if not args.junit.is_file():
        raise SystemExit(f"error: {args.junit} not found: run pytest with --junitxml={args.junit}")
    try:
        result = summary(args.junit, args.top)
    except ET.ParseError as e:
        raise SystemExit(f"error: {args.junit} is not JUnit XML ({e})") from None
    except ValueError as e:  # a time or CPU figure that is not a number
        raise SystemExit(f"error: {args.junit}: a figure is not a number ({e})") from None
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
