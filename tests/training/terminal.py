"""Start a `recstack` child process as a terminal would, for the Ctrl-C tests."""

import signal


def default_sigint() -> None:
    """preexec_fn: SIGINT handled as a terminal delivers it. A pytest started as a background
    job of a non-interactive shell has SIGINT ignored, its children inherit that, and Python
    then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
