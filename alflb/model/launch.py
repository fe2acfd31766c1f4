"""Processes and signals of training: the local launcher and the interrupt request.

:func:`launch_local` starts ``nproc`` local processes that form one process group (the
``alflb train --nproc N`` launcher; ``torchrun`` does the same job on clusters), watches
them and stops the others when one fails. :class:`StopRequest` turns the first SIGINT or
SIGTERM into a request that the training loop honours at the next step boundary, with a
checkpoint. The ranks die with the launcher: on Linux the kernel sends each a SIGTERM when
the launcher dies (``prctl(PR_SET_PDEATHSIG)``), elsewhere a watchdog thread notices that
the parent changed; a SIGTERM or SIGINT to the launcher is forwarded to the ranks, which
stop like after Ctrl-C.

>>> 0 < free_port() < 65536
True
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .._validate import positive_int

__all__ = ["StopRequest", "die_with_parent", "free_port", "launch_local"]


_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)


class StopRequest:
    """While active, the first SIGINT or SIGTERM asks the training loop to stop at the next step boundary.

    The loop saves a checkpoint there and raises; a second signal stops at once (SIGINT:
    ``KeyboardInterrupt``; SIGTERM: the default, death), with nothing saved. Installed
    only in the main thread; the previous handlers come back on exit.
    """

    def __init__(self, announce: bool = True) -> None:
        self.requested = False
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.requested = True
        for s in _SIGNALS:
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                  "(interrupt again to stop at once without one)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in _SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}


def die_with_parent(poll_s: float = 0.5, grace_s: float = 30.0) -> None:
    """Make this process stop when its parent dies (call first thing in a launched rank).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, so the kernel sends a SIGTERM (a stop with
    a checkpoint, :class:`StopRequest`) the moment the parent dies, even by SIGKILL. Every
    platform: a daemon thread that polls the parent pid and, once it changes, sends this
    process a SIGTERM, then ends it after ``grace_s`` if it is still alive.
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before the prctl took effect
        os._exit(143)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(143)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, target: Callable[..., int | None], args: tuple) -> None:
    os.setsid()  # a terminal's Ctrl-C reaches the launcher only; it forwards one SIGINT
    die_with_parent()
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    code = target(*args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


def launch_local(nproc: int, target: Callable[..., int | None], args: tuple = (), *,
                 grace_s: float = 5.0, log: Callable[[str], None] | None = None) -> int:
    """Run ``target(*args)`` in ``nproc`` local processes that form one gloo/NCCL group.

    Each child gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR=127.0.0.1``
    with a free ``MASTER_PORT``, and exits with ``target``'s return value. The launcher
    watches the children: when one exits non-zero it stops the others (SIGTERM, then
    SIGKILL after ``grace_s``) and returns that exit code, after a message naming the
    failed rank; a SIGINT or SIGTERM to the launcher is forwarded as a SIGINT to every child
    (which then stop at a step boundary with a checkpoint), and the children die with the
    launcher (:func:`die_with_parent`). Returns 0 when every rank succeeded.
    """
    nproc = positive_int(nproc, "nproc")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    mp = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [mp.Process(target=_worker, args=(r, nproc, port, target, args), name=f"rank{r}")
             for r in range(nproc)]
    for p in procs:
        p.start()

    def forward(signum, frame) -> None:
        for p in procs:
            if p.exitcode is None and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in _SIGNALS}
    try:
        pending = set(range(nproc))
        while pending:
            multiprocessing.connection.wait([procs[r].sentinel for r in pending], timeout=1.0)
            exited = [r for r in sorted(pending) if procs[r].exitcode is not None]
            pending.difference_update(exited)
            failed = [r for r in exited if procs[r].exitcode not in (0, 130)]
            if failed:
                others = sorted(pending)
                _stop(procs, others, grace_s)
                what = "; ".join(
                    f"rank {r} of {nproc} " + (f"was killed by signal {-c}" if c < 0 else f"exited with code {c}")
                    for r in failed for c in [procs[r].exitcode]
                )
                log(f"alflb: {what}; stopped the other ranks {others}")
                code = procs[failed[0]].exitcode
                return code if code > 0 else 1
        codes = [p.exitcode for p in procs]
        return 130 if 130 in codes else 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop(procs, [r for r, p in enumerate(procs) if p.exitcode is None], grace_s)


def _stop(procs: list, ranks: list[int], grace_s: float) -> None:
    for r in ranks:
        if procs[r].exitcode is None:
            procs[r].terminate()
    deadline = time.monotonic() + grace_s
    for r in ranks:
        procs[r].join(max(0.0, deadline - time.monotonic()))
        if procs[r].exitcode is None:
            procs[r].kill()
            procs[r].join()
