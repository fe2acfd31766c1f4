"""One loop compiled twice by numba, serial and parallel, each with its own disk cache.

numba keys a cached compilation by the function's qualified name, source line, signature,
CPU and bytecode, not by the ``parallel`` flag. Two ``njit(cache=True)`` dispatchers of
one Python function therefore share cache entries: whichever compiled first is what the
other loads in every later process, so the "parallel" build could run the serial code
(or the reverse). Each build here compiles a copy of the function under its own name
(``<name>__serial``, ``<name>__parallel``), so each has its own cache file.
"""

from __future__ import annotations

import types

import numba

__all__ = ["serial_and_parallel"]


def _renamed(fn: types.FunctionType, suffix: str) -> types.FunctionType:
    """A copy of ``fn`` whose name and qualified name end in ``suffix`` (same code, globals)."""
    name, qualname = fn.__name__ + suffix, fn.__qualname__ + suffix
    code = fn.__code__.replace(co_name=name, co_qualname=qualname)
    copy = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = qualname
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return copy


def serial_and_parallel(fn: types.FunctionType, **options):
    """``(serial, parallel)`` numba dispatchers of ``fn`` (``prange`` is ``range`` in the
    serial one), cached on disk apart. ``options`` go to both ``njit`` calls."""
    options = {"cache": True, "nogil": True, **options}
    return (numba.njit(parallel=False, **options)(_renamed(fn, "__serial")),
            numba.njit(parallel=True, **options)(_renamed(fn, "__parallel")))
