"""What machine a benchmark ran on, for its JSON: platform, CPU model, cores, RAM, GPU."""

import os
import platform
import re
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
