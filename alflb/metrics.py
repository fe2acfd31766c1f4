r"""Load-imbalance metrics (SPEC section 5).

Shape legend: ``E`` experts, ``N`` steps, ``L`` MoE layers.

Every function takes loads (token counts per expert) as a numpy array or torch tensor
whose *last* axis is experts, and reduces over it; leading axes (steps, layers) are
kept. Definitions:

.. math::

    \mathrm{MaxVio} = \frac{\max_k A_k - \bar A}{\bar A}, \qquad \bar A = \tfrac1E \sum_k A_k

(Wang et al. 2024). ``MaxVio_batch`` applies it to one training batch's loads,
``MaxVio_global`` to loads summed over a whole held-out set. With capacities other than
the balanced ``L``, :func:`max_violation` also accepts ``capacity_E`` and then measures
``max_k (A_k - c_k) / c_k`` over experts with ``c_k > 0``.

References
----------
.. [W] L. Wang et al., Auxiliary-Loss-Free Load Balancing Strategy for
   Mixture-of-Experts, arXiv:2408.15664, section 4.1 (MaxVio).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._array import to_numpy
from .errors import InvalidInputError

__all__ = [
    "ImbalanceSummary",
    "coefficient_of_variation",
    "dead_experts",
    "dropped_fraction",
    "imbalance_summary",
    "load_entropy",
    "max_violation",
    "min_over_mean",
    "smooth",
]


def _loads(load_E: Any) -> np.ndarray:
    a = to_numpy(load_E, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] == 0:
        raise InvalidInputError(f"loads must have a non-empty last axis (experts), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InvalidInputError("loads contain NaN or inf")
    if np.any(a < 0):
        raise InvalidInputError("loads must be non-negative token counts")
    with np.errstate(over="ignore"):
        total = a.sum(axis=-1)
    if not np.all(np.isfinite(total)):
        raise InvalidInputError("loads are too large: their sum overflows float64")
    return a


def max_violation(load_E: Any, capacity_E: Any = None) -> np.ndarray | float:
    """MaxVio over the last axis; 0 for a perfectly balanced load.

    >>> max_violation([2, 2, 2, 2]), max_violation([8, 0, 0, 0])
    (0.0, 3.0)
    """
    a = _loads(load_E)
    if capacity_E is None:
        mean = a.mean(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(mean > 0, (a.max(axis=-1) - mean) / np.where(mean > 0, mean, 1.0), 0.0)
    else:
        c = _loads(capacity_E)
        if c.shape[-1] != a.shape[-1]:
            raise InvalidInputError(f"capacity_E has {c.shape[-1]} experts, loads have {a.shape[-1]}")
        try:
            np.broadcast_shapes(a.shape, c.shape)
        except ValueError:
            raise InvalidInputError(
                f"capacity_E of shape {c.shape} does not broadcast against loads of shape {a.shape}"
            ) from None
        pos = c > 0
        if not np.all(pos.any(axis=-1)):
            raise InvalidInputError("capacity_E has no positive entry: MaxVio relative to it is undefined")
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(pos, (a - c) / np.where(pos, c, 1.0), -np.inf)
        out = rel.max(axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def min_over_mean(load_E: Any) -> np.ndarray | float:
    """``min_k A_k / mean_k A_k`` (1 when balanced, 0 when some expert is idle)."""
    a = _loads(load_E)
    mean = a.mean(axis=-1)
    out = np.where(mean > 0, a.min(axis=-1) / np.where(mean > 0, mean, 1.0), 1.0)
    return float(out) if np.ndim(out) == 0 else out


def dead_experts(load_E: Any) -> np.ndarray | int:
    """Number of experts with zero load."""
    out = (_loads(load_E) == 0).sum(axis=-1)
    return int(out) if np.ndim(out) == 0 else out


def coefficient_of_variation(load_E: Any) -> np.ndarray | float:
    """Standard deviation over mean of the loads (population std)."""
    a = _loads(load_E)
    mean = a.mean(axis=-1)
    out = np.where(mean > 0, a.std(axis=-1) / np.where(mean > 0, mean, 1.0), 0.0)
    return float(out) if np.ndim(out) == 0 else out


def load_entropy(load_E: Any, normalized: bool = True) -> np.ndarray | float:
    """Shannon entropy of the load distribution; divided by ``ln E`` when ``normalized``."""
    a = _loads(load_E)
    total = a.sum(axis=-1, keepdims=True)
    q = np.where(total > 0, a / np.where(total > 0, total, 1.0), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(q > 0, q * np.log(q), 0.0).sum(axis=-1)
    if normalized:
        h = h / np.log(a.shape[-1])
    return float(h) if np.ndim(h) == 0 else h


def dropped_fraction(load_E: Any, capacity_E: Any) -> np.ndarray | float:
    """Fraction of routed slots beyond an at-most capacity: ``sum_k max(A_k - c_k, 0) / sum_k A_k``."""
    a = _loads(load_E)
    c = _loads(capacity_E)
    total = a.sum(axis=-1)
    over = np.maximum(a - c, 0.0).sum(axis=-1)
    out = np.where(total > 0, over / np.where(total > 0, total, 1.0), 0.0)
    return float(out) if np.ndim(out) == 0 else out


def smooth(values_N: Any, window: int = 100) -> np.ndarray:
    """Trailing moving average over the first axis (the first ``window-1`` use what exists).

    Used for ``MaxVio_batch`` curves, which [W] smooths over 100 steps.
    """
    v = to_numpy(values_N, dtype=np.float64)
    if window < 1:
        raise InvalidInputError(f"window must be >= 1, got {window}")
    if v.shape[0] == 0:
        return v.copy()
    c = np.cumsum(v, axis=0)
    out = c.copy()
    out[window:] = c[window:] - c[:-window]
    counts = np.minimum(np.arange(1, v.shape[0] + 1), window).reshape((-1,) + (1,) * (v.ndim - 1))
    return out / counts


@dataclass(frozen=True)
class ImbalanceSummary:
    """All SPEC section 5 metrics of one load vector (floats)."""

    max_vio: float
    min_over_mean: float
    dead_experts: int
    cv: float
    entropy: float
    dropped_fraction: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def imbalance_summary(load_E: Any, capacity_E: Any = None) -> ImbalanceSummary:
    """Every imbalance metric of a single load vector ``(E,)``.

    ``dropped_fraction`` is filled when at-most ``capacity_E`` is given.
    """
    a = _loads(load_E)
    if a.ndim != 1:
        raise InvalidInputError(f"imbalance_summary takes one load vector (E,), got shape {a.shape}")
    return ImbalanceSummary(
        max_vio=float(max_violation(a)),
        min_over_mean=float(min_over_mean(a)),
        dead_experts=int(dead_experts(a)),
        cv=float(coefficient_of_variation(a)),
        entropy=float(load_entropy(a)),
        dropped_fraction=None if capacity_E is None else float(dropped_fraction(a, capacity_E)),
    )
