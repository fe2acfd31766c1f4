r"""Load-imbalance metrics (docs/theory.md section 6).

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

from .._array import to_numpy
from .._validate import positive_int
from ..errors import InvalidInputError

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


def _ratio(num: np.ndarray, den: np.ndarray, default: float) -> np.ndarray:
    """``num / den`` where ``den > 0``, ``default`` elsewhere (no division by 0)."""
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), default)


def _scalar(out: np.ndarray, kind: type = float) -> Any:
    """A Python scalar for a 0-d result, else the array (leading axes kept)."""
    return kind(out) if np.ndim(out) == 0 else out


def max_violation(load_E: Any, capacity_E: Any = None) -> np.ndarray | float:
    r"""MaxVio over the last axis (experts); 0 for a perfectly balanced load.

    .. math::

        \mathrm{MaxVio} = \frac{\max_k A_k - \bar A}{\bar A}, \quad
        \bar A = \tfrac1E \textstyle\sum_k A_k; \qquad
        \text{with } c:\; \max_{k:\, c_k > 0} \frac{A_k - c_k}{c_k}

    (0 when :math:`\bar A = 0`).

    Parameters
    ----------
    load_E : array_like or torch.Tensor, shape (..., E)
        Token counts :math:`A`, non-negative.
    capacity_E : array_like, shape (..., E), optional
        Capacities :math:`c` broadcasting against the loads, with a positive entry.

    Returns
    -------
    float, or ndarray of the leading shape

    Examples
    --------
    >>> max_violation([2, 2, 2, 2]), max_violation([8, 0, 0, 0])
    (0.0, 3.0)
    >>> max_violation([3, 1], capacity_E=[2, 2])
    0.5
    """
    a = _loads(load_E)
    if capacity_E is None:
        mean = a.mean(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = _ratio(a.max(axis=-1) - mean, mean, 0.0)
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
    return _scalar(out)


def min_over_mean(load_E: Any) -> np.ndarray | float:
    r"""The smallest load relative to the mean (1 when balanced, 0 when an expert is idle).

    .. math:: \frac{\min_k A_k}{\bar A}, \qquad \bar A = \tfrac1E \textstyle\sum_k A_k
              \quad (1 \text{ when } \bar A = 0)

    Parameters
    ----------
    load_E : array_like or torch.Tensor, shape (..., E)

    Examples
    --------
    >>> min_over_mean([1, 3]), min_over_mean([0, 4])
    (0.5, 0.0)
    """
    a = _loads(load_E)
    return _scalar(_ratio(a.min(axis=-1), a.mean(axis=-1), 1.0))


def dead_experts(load_E: Any) -> np.ndarray | int:
    r"""The number of experts with zero load.

    .. math:: \#\{k : A_k = 0\}

    Parameters
    ----------
    load_E : array_like or torch.Tensor, shape (..., E)

    Examples
    --------
    >>> dead_experts([0, 4, 0, 1])
    2
    """
    return _scalar((_loads(load_E) == 0).sum(axis=-1), int)


def coefficient_of_variation(load_E: Any) -> np.ndarray | float:
    r"""Standard deviation over mean of the loads (population std; 0 when all are 0).

    .. math:: \mathrm{CV} = \frac{\sqrt{\tfrac1E \sum_k (A_k - \bar A)^2}}{\bar A}

    Parameters
    ----------
    load_E : array_like or torch.Tensor, shape (..., E)

    Examples
    --------
    >>> coefficient_of_variation([1, 3])
    0.5
    """
    a = _loads(load_E)
    return _scalar(_ratio(a.std(axis=-1), a.mean(axis=-1), 0.0))


def load_entropy(load_E: Any, normalized: bool = True) -> np.ndarray | float:
    r"""Shannon entropy of the load distribution, divided by :math:`\ln E` when ``normalized``.

    .. math:: H = -\sum_k q_k \ln q_k, \qquad q_k = A_k / \textstyle\sum_j A_j
              \quad (0 \ln 0 = 0)

    Parameters
    ----------
    load_E : array_like or torch.Tensor, shape (..., E)
    normalized : bool
        Divide by :math:`\ln E` (1 for a balanced load).

    Examples
    --------
    >>> load_entropy([2, 2, 2, 2]), abs(load_entropy([8, 0, 0, 0]))
    (1.0, 0.0)
    """
    a = _loads(load_E)
    q = _ratio(a, a.sum(axis=-1, keepdims=True), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(q > 0, q * np.log(q), 0.0).sum(axis=-1)
    if normalized:
        h = h / np.log(a.shape[-1])
    return _scalar(h)


def dropped_fraction(load_E: Any, capacity_E: Any) -> np.ndarray | float:
    r"""Fraction of routed slots beyond an at-most capacity (0 when nothing is routed).

    .. math:: \frac{\sum_k \max(A_k - c_k, 0)}{\sum_k A_k}

    Parameters
    ----------
    load_E : array_like or torch.Tensor, shape (..., E)
    capacity_E : array_like, shape (..., E)

    Examples
    --------
    >>> dropped_fraction([3, 1], [2, 2])
    0.25
    """
    a = _loads(load_E)
    c = _loads(capacity_E)
    over = np.maximum(a - c, 0.0).sum(axis=-1)
    return _scalar(_ratio(over, a.sum(axis=-1), 0.0))


def smooth(values_N: Any, window: int = 100) -> np.ndarray:
    r"""Trailing moving average over the first axis (the first ``window-1`` use what exists).

    .. math:: s_n = \frac{1}{\min(n+1, w)} \sum_{j=\max(0, n-w+1)}^{n} v_j

    Used for ``MaxVio_batch`` curves, which [W] smooths over 100 steps.

    Parameters
    ----------
    values_N : array_like, shape (N, ...)
    window : int
        :math:`w \ge 1`.

    Examples
    --------
    >>> smooth([1.0, 3.0, 5.0], window=2).tolist()
    [1.0, 2.0, 4.0]
    """
    v = to_numpy(values_N, dtype=np.float64)
    window = positive_int(window, "window")
    if v.shape[0] == 0:
        return v.copy()
    c = np.cumsum(v, axis=0)
    out = c.copy()
    out[window:] = c[window:] - c[:-window]
    counts = np.minimum(np.arange(1, v.shape[0] + 1), window).reshape((-1,) + (1,) * (v.ndim - 1))
    return out / counts


@dataclass(frozen=True)
class ImbalanceSummary:
    """All docs/theory.md section 6 metrics of one load vector ``(E,)`` (see each function's formula).

    Attributes
    ----------
    max_vio : float
        :func:`max_violation` (relative to the mean load).
    min_over_mean : float
        :func:`min_over_mean`.
    dead_experts : int
        :func:`dead_experts`.
    cv : float
        :func:`coefficient_of_variation`.
    entropy : float
        :func:`load_entropy`, normalised.
    dropped_fraction : float or None
        :func:`dropped_fraction` when at-most capacities were given.

    Examples
    --------
    >>> imbalance_summary([2, 2]).max_vio
    0.0
    """

    max_vio: float
    min_over_mean: float
    dead_experts: int
    cv: float
    entropy: float
    dropped_fraction: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        """The fields as a plain dict.

        >>> imbalance_summary([2, 2]).as_dict()["dead_experts"]
        0
        """
        return asdict(self)


def imbalance_summary(load_E: Any, capacity_E: Any = None) -> ImbalanceSummary:
    """Every imbalance metric of a single load vector.

    Parameters
    ----------
    load_E : array_like or torch.Tensor, shape (E,)
    capacity_E : array_like, shape (E,), optional
        At-most capacities; fills ``dropped_fraction``.

    Examples
    --------
    >>> s = imbalance_summary([3, 1], capacity_E=[2, 2])
    >>> s.max_vio, s.min_over_mean, s.dropped_fraction
    (0.5, 0.5, 0.25)
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
