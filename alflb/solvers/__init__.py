"""Exact solvers of the top-K assignment problem, with optimality certificates.

Sign convention: the router adds the bias, ``scores + bias``; an overloaded expert's
bias goes down. Every returned bias is an optimal dual of the expert constraints.
"""

from ._bias import bias_from_assignment
from ._chunked import ChunkedSolveResult, solve_chunked
from ._registry import available_methods, solve
from ._result import Certificate, SolveResult, certify

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
