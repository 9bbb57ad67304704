"""Start a `recstack` child process as a terminal would, and wait for it to reach a point, for
the Ctrl-C and kill tests."""

import signal
import subprocess
from pathlib import Path

import pytest
from eventually import eventually


def default_sigint() -> None:
    """preexec_fn: SIGINT handled as a terminal delivers it. A pytest started as a background
    job of a non-interactive shell has SIGINT ignored, its children inherit that, and Python
    then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    """Wait until `process` has written `path`; fail at once if it exits first."""

    def written() -> bool:
        if process.poll() is not None:  # pytest.fail is no AssertionError: eventually stops
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"the process exited before writing {path}:\n{output}")
        return path.exists()

    eventually(written, timeout_s=seconds, message=f"{path} never appeared")
