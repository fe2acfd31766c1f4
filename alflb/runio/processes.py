"""Worker processes that die with their parent, and the record of their pids in a run folder."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from .folders import PIDS_NAME


# --------------------------------------------------------------------------- worker processes
def record_worker_pid(folder: str | os.PathLike, pid: int | None = None) -> None:
    """Append a worker's pid to the run folder's :data:`PIDS_NAME` (one line, one write)."""
    line = f"{os.getpid() if pid is None else pid}\n".encode()
    fd = os.open(Path(folder) / PIDS_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def worker_pids(folder: str | os.PathLike) -> list[int]:
    """The pids :func:`record_worker_pid` recorded in ``folder`` (empty if none)."""
    try:
        text = (Path(folder) / PIDS_NAME).read_text(encoding="ascii")
    except FileNotFoundError:
        return []
    return [int(t) for t in text.split() if t.isdigit()]


def install_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Make this (child) process die when its parent dies.

    On Linux, ``prctl(PR_SET_PDEATHSIG, sig)``; everywhere, a daemon thread that watches
    :func:`os.getppid` and sends ``sig`` to this process when the parent is gone. Call it
    first thing in a worker process (a pool initializer).
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent or parent == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, name="alflb-parent-watchdog", daemon=True).start()
