"""constraints.txt, the lock (scripts/lock.sh): it covers pyproject.toml and matches the venv.

No network: the lock is read as text and the venv through importlib.metadata. A dependency
added to or raised in pyproject.toml without `bash scripts/lock.sh` fails here.
"""

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
TORCH = "2.13.0"
# The lock's target (scripts/lock.sh: --python-platform x86_64-manylinux_2_28, Python 3.11)
PLATFORM = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")
REFRESH = "refresh the lock: bash scripts/lock.sh"
UNLOCKED = {"pip"}  # the installer: scripts/install.sh upgrades it (lock.sh: --no-emit-package)


def parse_lock(text: str) -> dict[str, str]:
    """{canonical name: version} of every `name==version` line; any other pin line is an error."""
    pins = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PIN.match(line.strip())
        assert match, f"constraints.txt: not a `name==version` pin: {line!r}"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def lock() -> dict[str, str]:
    return parse_lock(LOCK.read_text())


def requirements(project: dict) -> list[Requirement]:
    """The dependencies and every extra's, as they apply on the lock's platform."""
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    reqs = [Requirement(line) for line in lines]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(PLATFORM)]


def unpinned(project: dict, pins: dict[str, str]) -> list[str]:
    """The requirements that the lock leaves out or pins to a version they do not allow."""
    problems = []
    for req in requirements(project):
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req}: not in constraints.txt")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req}: constraints.txt pins {version}")
    return problems


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_lock_pins_every_requirement_of_pyproject():
    problems = unpinned(pyproject(), lock())
    assert not problems, f"{REFRESH}:\n" + "\n".join(problems)


def test_a_dependency_added_without_refreshing_the_lock_is_caught():
    project = pyproject()
    pins = lock()
    added = {**project, "dependencies": [*project["dependencies"], "left-pad-never>=1"]}
    assert "left-pad-never>=1: not in constraints.txt" in unpinned(added, pins)
    extras = {**project["optional-dependencies"], "dev": ["ray[serve]>=99"]}
    raised = {**project, "optional-dependencies": extras}
    assert f"ray[serve]>=99: constraints.txt pins {pins['ray']}" in unpinned(raised, pins)


def test_torch_is_pinned_exactly_and_no_pin_has_a_local_label():
    pins = lock()
    assert pins["torch"] == TORCH  # not 2.13.0+cpu: the same file installs the CUDA build
    local = {name: v for name, v in pins.items() if Version(v).local is not None}
    assert not local, f"pins with a local version label (an index's own build): {local}"


def test_the_gpu_install_pin_is_in_the_lock():
    install = (ROOT / "scripts" / "install.sh").read_text()
    name, version = re.search(r'^ORT_GPU="([\w-]+)==([^"]+)"$', install, re.M).groups()
    assert lock().get(canonicalize_name(name)) == version, REFRESH


def test_the_venv_has_the_locked_versions():
    """Each locked package that is installed has the locked version (local labels aside:
    torch 2.13.0+cpu satisfies the pin 2.13.0, as it does for pip)."""
    wrong = []
    for name, version in lock().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # the GPU build's pins on a CPU machine, another Python's backports
        if not SpecifierSet(f"=={version}").contains(installed, prereleases=True):
            wrong.append(f"{name} {installed} (lock: {version})")
    assert not wrong, (
        "reinstall (bash scripts/install.sh --editable --extras dev .venv) or refresh the "
        "lock (bash scripts/lock.sh): " + ", ".join(wrong)
    )


def test_every_installed_dependency_is_locked():
    """The lock is complete for what pip installed: every requirement met in the venv, followed
    through the installed packages' metadata from pyproject.toml on, is pinned."""
    pins = lock()
    todo, seen, missing = requirements(pyproject()), set(), set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        if name not in pins and name not in UNLOCKED:
            missing.add(name)
        try:
            needs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in needs:
            dep = Requirement(line)
            extras = ["", *req.extras]
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dep)
    assert not missing, f"{REFRESH}: not in constraints.txt: {sorted(missing)}"


def test_parse_lock_reads_pins_and_refuses_anything_else():
    text = "# header\n\nTorch==2.13.0\n    # via recstack\nRay_Serve==1.0\n"
    assert parse_lock(text) == {"torch": "2.13.0", "ray-serve": "1.0"}
    try:
        parse_lock("ray>=2.60\n")
    except AssertionError as exc:
        assert "not a `name==version` pin" in str(exc)
    else:
        raise AssertionError("an unpinned line passed")
