"""Durable file writes shared by the event log and `recstack data forget`."""

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a folder's entries (a create, rename or unlink in it) survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
