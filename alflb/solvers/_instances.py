"""Random score matrices for tests, benchmarks and the CLI (not a score stream).

Shape legend: ``T`` tokens, ``E`` experts.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnknownNameError

__all__ = ["DISTRIBUTIONS", "random_scores"]


def _softmax(z_TE: np.ndarray) -> np.ndarray:
    z = np.exp(z_TE - z_TE.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


DISTRIBUTIONS = {
    "gaussian": lambda rng, t, e: rng.standard_normal((t, e)),
    "sigmoid": lambda rng, t, e: 1.0 / (1.0 + np.exp(-rng.standard_normal((t, e)))),
    "softmax": lambda rng, t, e: _softmax(rng.standard_normal((t, e))),
    "student_t": lambda rng, t, e: rng.standard_t(3.0, size=(t, e)),
    "cauchy": lambda rng, t, e: rng.standard_cauchy((t, e)),
    # expert popularity offsets: the capacities bind hard and the optimal bias is far from 0
    "skewed": lambda rng, t, e: rng.standard_normal((t, e)) + np.linspace(-2.0, 2.0, e),
    "ties": lambda rng, t, e: np.round(rng.standard_normal((t, e)), 1),
    "integer": lambda rng, t, e: rng.integers(0, 4, size=(t, e)).astype(np.float64),
}


def random_scores(n_tokens: int, n_experts: int, distribution: str = "gaussian", rng=None) -> np.ndarray:
    """A ``(T, E)`` float64 score matrix from one of :data:`DISTRIBUTIONS`.

    >>> random_scores(3, 4, "integer", rng=0).shape
    (3, 4)
    """
    if distribution not in DISTRIBUTIONS:
        raise UnknownNameError(
            f"unknown distribution {distribution!r}; available: {', '.join(DISTRIBUTIONS)}"
        )
    rng = np.random.default_rng(rng)
    return np.asarray(DISTRIBUTIONS[distribution](rng, n_tokens, n_experts), dtype=np.float64)
