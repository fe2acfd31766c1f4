"""One line that names the machine a benchmark ran on (CPU model, cores, threads, Python)."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """``machine: <cpu>, <n> cores available, Python <v>, numpy <v>``."""
    import numpy as np

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return (f"machine: {cpu_model()}, {cores} cores available, Python "
            f"{platform.python_version()}, numpy {np.__version__}")
