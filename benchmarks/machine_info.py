"""What machine a benchmark ran on, for its JSON (platform, CPU model, cores, RAM, GPU), and
the process's peak memory."""

import os
import platform
import re
import resource
from pathlib import Path

import psutil
import torch


def machine(**extra) -> dict:
    """The machine's description, with `extra` fields (e.g. the thread count used)."""
    cpuinfo = Path("/proc/cpuinfo")
    models = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.exists() else []
    return {
        "platform": platform.platform(),
        "cpu": models[0] if models else platform.processor(),
        "cores": os.cpu_count(),
        **extra,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux); False where only the process-wide peak exists."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """This process's peak RSS since the last reset_peak_rss (Linux VmHWM), else ever."""
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1]) / 1024
    except (OSError, TypeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
