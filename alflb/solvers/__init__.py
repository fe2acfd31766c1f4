"""Exact solvers of the top-K assignment problem, with optimality certificates.

Sign convention: the router adds the bias, ``scores + bias``; an overloaded expert's
bias goes down. Every returned bias is an optimal dual of the expert constraints.

The names are re-exported lazily, so that importing a light private module of this
package (the instance generators the command line lists) compiles no numba kernel.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "bias_from_assignment": "._bias",
    "ChunkedSolveResult": "._chunked",
    "solve_chunked": "._chunked",
    "available_methods": "._registry",
    "solve": "._registry",
    "Certificate": "._result",
    "SolveResult": "._result",
    "certify": "._result",
}

__all__ = [
    "Certificate",
    "ChunkedSolveResult",
    "SolveResult",
    "available_methods",
    "bias_from_assignment",
    "certify",
    "solve",
    "solve_chunked",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from ._bias import bias_from_assignment
    from ._chunked import ChunkedSolveResult, solve_chunked
    from ._registry import available_methods, solve
    from ._result import Certificate, SolveResult, certify
