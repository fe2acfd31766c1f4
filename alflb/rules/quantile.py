r"""Quantile balancing: an exact block-coordinate step on the batch's LP dual (Su 2026).

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token. Sign convention: the
router adds the bias; an overloaded expert's bias goes down (this project's ``p`` is
Megatron's ``-beta``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._array import NUMPY, backend, to_numpy
from .._validate import positive_int
from ..errors import InvalidInputError
from ._checks import check_flag, check_unit_interval, infer_k
from .base import RuleUpdate, UpdateRule

__all__ = ["QuantileRule", "quantile_sweep"]


def quantile_sweep(
    scores_TE: np.ndarray, bias_E: np.ndarray, capacity_E: np.ndarray, k: int
) -> np.ndarray:
    r"""One exact block-coordinate sweep on the batch's LP dual (float64 numpy).

    .. math::

        \alpha_i = (\gamma_i + p)_{(K+1)}, \qquad
        p_k^{\text{new}} = -\big(\gamma_{\cdot k} - \alpha\big)_{(c_k + 1)}

    where :math:`v_{(j)}` is the ``j``-th largest entry; where :math:`c_k = T` the
    threshold is the smallest value minus 1. See :class:`QuantileRule`.

    Parameters
    ----------
    scores_TE : ndarray, shape (T, E)
        The batch's scores :math:`\gamma`.
    bias_E : ndarray, shape (E,)
        The bias :math:`p` the batch was routed with.
    capacity_E : ndarray of int, shape (E,)
        Capacities :math:`0 \le c_k \le T`.
    k : int
        Experts per token.

    Returns
    -------
    bias_E : ndarray, shape (E,)
        The new :math:`p` (the router adds it; an overloaded expert's bias goes down),
        before any EMA or centring.

    Examples
    --------
    >>> g = np.array([[1.0, 0.0], [0.9, 0.0], [0.7, 0.0], [0.6, 0.0]])
    >>> quantile_sweep(g, np.zeros(2), np.array([2, 2]), 1).tolist()
    [-0.7, -0.0]
    """
    values = scores_TE + bias_E
    (alpha_T,) = NUMPY.kth_largest(values, k)  # (K+1)-th largest
    diff_TE = scores_TE - alpha_T[:, None]
    sorted_TE = -np.sort(-diff_TE, axis=0)  # column-wise descending
    n_tokens = scores_TE.shape[0]
    cap = np.asarray(capacity_E, dtype=np.int64)
    idx = np.minimum(cap, n_tokens - 1)
    thresh_E = sorted_TE[idx, np.arange(scores_TE.shape[1])]
    full = cap >= n_tokens
    thresh_E = np.where(full, sorted_TE[-1] - 1.0, thresh_E)
    return -thresh_E


@dataclass(frozen=True)
class QuantileRule(UpdateRule):
    r"""Quantile balancing: an exact block-coordinate step on the batch's LP dual (Su 2026).

    In this project's convention ``p = -beta`` (Megatron's ``beta``), one sweep on the
    batch :math:`\gamma` just routed with ``p``:

    .. math::

        \alpha_i = (\gamma_i + p)_{(K+1)}, \qquad
        p_k^{\text{new}} = -\big(\gamma_{\cdot k} - \alpha\big)_{(c_k + 1)}

    where :math:`v_{(j)}` is the ``j``-th largest entry. :math:`\alpha` minimises the LP
    dual over the token multipliers for fixed ``p``; ``p_k`` then minimises it over column
    ``k`` for fixed :math:`\alpha`: after it, exactly :math:`c_k` tokens (without ties)
    have :math:`\gamma_{ik} + p_k > \alpha_i`. ``n_sweeps > 1`` repeats the sweep on the
    same batch (Megatron does one). Then an optional EMA blend
    :math:`p \leftarrow \text{ema}\, p^{\text{old}} + (1 - \text{ema})\, p^{\text{new}}`
    (default 0) and mean-centring (default on). Requires integer capacities
    :math:`c_k \le T`. ``K`` is ``k`` when given, else :math:`\sum_k A_k / T`. No step
    size: ``step_E`` is ``None``. Declares ``needs_scores``.

    One sweep is exact for ``E = 2`` (balanced up to the tie it creates at the threshold
    token), but for ``E > 2`` it is only a descent step: the dual ``g`` never increases,
    yet the loads of the next routing need not be balanced, and repeated sweeps can stall
    at a non-optimal point (block-coordinate descent on a non-smooth function).

    References
    ----------
    .. [Su] J. Su, quantile balancing (2026), as implemented in Megatron-core's router.

    >>> g = np.array([[1.0, 0.0], [0.9, 0.0], [0.7, 0.0], [0.6, 0.0]])
    >>> new = QuantileRule().update(np.zeros(2), [4, 0], [2, 2], scores_TE=g).bias_E
    >>> new.round(12).tolist()  # token 3 now ties: 0.7 - 0.35 = 0 + 0.35
    [-0.35, 0.35]
    """

    k: int | None = None
    n_sweeps: int = 1
    ema: float = 0.0
    center: bool = True
    name: ClassVar[str] = "quantile"
    needs_scores: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.k is not None:
            object.__setattr__(self, "k", positive_int(self.k, "k"))
        object.__setattr__(self, "n_sweeps", positive_int(self.n_sweeps, "n_sweeps"))
        object.__setattr__(self, "ema", check_unit_interval(self.ema, "ema"))
        check_flag(self.center, "center")

    def _k(self, load_E: Any, n_tokens: int, n_experts: int) -> int:
        """``K``: the parameter, else inferred from the loads as ``sum(A) / T``."""
        return infer_k(self.k, load_E, n_tokens, n_experts)

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        gamma = to_numpy(scores_TE)
        n_tokens, n_experts = gamma.shape
        cap = to_numpy(capacity_E)
        if np.any(cap != np.round(cap)):
            raise InvalidInputError(
                f"quantile balancing needs integer capacities, got {cap.tolist()[:8]}"
            )
        cap = cap.astype(np.int64)
        if np.any(cap > n_tokens):
            raise InvalidInputError(
                f"capacities must be <= T = {n_tokens}, got max {int(cap.max())}"
            )
        k = self._k(load_E, n_tokens, n_experts)
        p_old = to_numpy(bias_E)
        p = p_old.copy()
        for _ in range(self.n_sweeps):
            p = quantile_sweep(gamma, p, cap, k)
        p = self.ema * p_old + (1.0 - self.ema) * p
        if self.center:
            p = p - p.mean()
        return RuleUpdate(backend(bias_E).as_like(p, bias_E), state.advanced(), None)
