"""The ``alflb`` command line.

Each subcommand lives in its own module ``alflb.cli.<name>`` that defines
``add_parser(subparsers)``; the parser's ``func`` default runs it and returns an exit
status. Heavy imports happen inside the subcommand, so ``alflb --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from ..errors import AlflbError

__all__ = ["build_parser", "main"]

# Order is the order shown by --help.
SUBCOMMANDS = ("demo", "solve", "check", "simulate", "train", "sweep", "compare", "ep", "audit",
               "advise", "semantics_diff")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="alflb",
        description=(
            "Auxiliary-loss-free load balancing for Mixture-of-Experts: exact solvers, "
            "the ALF-LB update family, online regret, and a DeepSeekMoE model."
        ),
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"alflb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``alflb`` script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = _terminate_like_interrupt()
    try:
        return int(args.func(args) or 0)
    except AlflbError as exc:  # documented errors: one line, no traceback
        return _fail(args.command, str(exc))
    except OSError as exc:  # the operating system refused: say what, on which path
        return _fail(args.command, os_error_message(exc))
    except MemoryError:
        return _fail(args.command, "not enough memory for this input: use smaller sizes "
                     "(--tokens, --steps, --experts) or a machine with more memory")
    except KeyboardInterrupt:
        print(f"alflb {args.command}: interrupted; finished results are kept (resume to continue)",
              file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def _terminate_like_interrupt():
    # SIGTERM stops a command the way Ctrl-C does: locks released, workers stopped, one line.
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        return None


def _fail(command: str, message: str) -> int:
    print(f"alflb {command}: error: {message}", file=sys.stderr)
    return 2


def os_error_message(exc: OSError) -> str:
    """One line for an error the operating system reported: what failed, on which path."""
    if exc.strerror is None:  # raised by alflb itself with its own message
        return str(exc) or type(exc).__name__
    what = exc.strerror
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    if isinstance(exc, PermissionError):
        hint = ": check the permissions of that path, or choose another"
    elif isinstance(exc, FileNotFoundError):
        hint = ": check the path"
    elif getattr(exc, "errno", None) == 28:  # ENOSPC
        hint = ": free space on that disk, or write elsewhere"
    else:
        hint = ""
    return f"{what}{f' ({where})' if where else ''}{hint}"
