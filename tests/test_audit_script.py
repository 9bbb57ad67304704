"""scripts/audit.sh: a finding fails, an unreachable service is NOT RUN, an accepted one passes.

The real pip-audit needs the vulnerability service, which this machine cannot reach. A fake one
in a fake venv stands in: it answers the canary and the lock as the scenario (FAKE_AUDIT) says,
in pip-audit's columns format with its exit codes, and logs its arguments.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FINDING = "GHSA-fake-0001"
FAKE_PIP_AUDIT = r"""#!/usr/bin/env bash
echo "$*" >>"$FAKE_LOG"
req="" prev=""
for arg in "$@"; do [ "$prev" = -r ] && req="$arg"; prev="$arg"; done
echo "WARNING:pip_audit._cli:--no-deps is supported, but users are encouraged to hash" >&2
if grep -qx 'requests==2.31.0' "$req"; then  # the canary
  case "$FAKE_AUDIT" in
    unreachable)
      echo "ERROR:pip_audit._cli:requests: Dependency not found on PyPI and could not be" \
        "audited: requests (2.31.0)" >&2
      exit 1 ;;
    no-advisories) echo "No known vulnerabilities found" >&2; exit 0 ;;
  esac
  echo "Found 1 known vulnerability in 1 package" >&2
  printf 'Name     Version ID             Fix Versions\n'
  printf -- '-------- ------- -------------- ------------\n'
  printf 'requests 2.31.0  CVE-2024-35195 2.32.0\n'
  exit 1
fi
if [ "$FAKE_AUDIT" = finding ] && [[ " $* " != *" --ignore-vuln GHSA-fake-0001 "* ]]; then
  echo "Found 1 known vulnerability in 1 package" >&2
  printf 'Name Version ID             Fix Versions Description\n'
  printf -- '---- ------- -------------- ------------ -----------\n'
  printf 'ray  2.60.0  GHSA-fake-0001 2.61.0       remote code execution\n'
  exit 1
fi
echo "No known vulnerabilities found" >&2
"""


@pytest.fixture
def repo(tmp_path):
    """A copy of the script, the lock and the ignore list, and a venv with the fake pip-audit."""
    (tmp_path / "scripts").mkdir()
    for name in ("scripts/audit.sh", "scripts/audit-ignore.txt", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    fake = tmp_path / "venv" / "bin" / "pip-audit"
    fake.parent.mkdir(parents=True)
    fake.write_text(FAKE_PIP_AUDIT)
    fake.chmod(0o755)
    return tmp_path


def audit(repo: Path, scenario: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = repo / "calls.log"
    env = {**os.environ, "FAKE_AUDIT": scenario, "FAKE_LOG": str(log)}
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "audit.sh"), str(repo / "venv")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, log.read_text().splitlines() if log.exists() else []


def accept(repo: Path, line: str) -> None:
    with (repo / "scripts" / "audit-ignore.txt").open("a") as f:
        f.write(line + "\n")


def test_a_finding_fails(repo):
    result, calls = audit(repo, "finding")
    assert result.returncode == 1
    assert FINDING in result.stderr and "dependency audit FAILED" in result.stderr
    lock_call = calls[-1].split()
    for flag in ("--no-deps", "--disable-pip", "--strict"):
        assert flag in lock_call
    assert lock_call[lock_call.index("-r") + 1] == "constraints.txt"


def test_an_unreachable_service_is_reported_and_not_a_failure(repo):
    result, calls = audit(repo, "unreachable")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "dependency audit NOT RUN: the vulnerability service did not answer (requests: "
        "Dependency not found on PyPI and could not be audited: requests (2.31.0))"
    ]
    assert len(calls) == 1  # the canary only: the lock is not audited by a mute service


def test_a_service_without_advisories_is_not_taken_for_a_clean_audit(repo):
    result, calls = audit(repo, "no-advisories")
    assert result.returncode == 0
    assert re.fullmatch(r"dependency audit NOT RUN: .*no advisories.*\n", result.stdout)
    assert len(calls) == 1


def test_an_accepted_finding_passes(repo):
    accept(repo, f"{FINDING}  # not reachable: recstack never calls the affected API")
    result, calls = audit(repo, "finding")
    assert result.returncode == 0, result.stderr
    assert "no known vulnerabilities (1 accepted in scripts/audit-ignore.txt)" in result.stdout
    assert f"--ignore-vuln {FINDING}" in calls[-1]


def test_a_clean_lock_passes_with_the_shipped_ignore_list(repo):
    result, _ = audit(repo, "clean")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dependency audit: ")
    assert "no known vulnerabilities" in result.stdout


def test_an_accepted_finding_needs_a_reason(repo):
    accept(repo, FINDING)
    result, calls = audit(repo, "finding")
    assert result.returncode == 2 and "has no '# reason'" in result.stderr
    assert not calls


def test_ci_runs_the_audit_after_the_linters_and_before_pytest():
    lines = (ROOT / "tests" / "run.sh").read_text().splitlines()
    step = {
        name: next(i for i, line in enumerate(lines) if line.startswith(prefix))
        for name, prefix in (
            ("hadolint", ".venv/bin/hadolint"),
            ("audit", "bash scripts/audit.sh"),
            ("pytest", ".venv/bin/python -m pytest"),
        )
    }
    assert step["hadolint"] < step["audit"] < step["pytest"]
