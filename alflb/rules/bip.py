r"""BIP-style balancing: a few exact dual iterations on each batch, warm-started.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token. Sign convention: the
router adds the bias; an overloaded expert's bias goes down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .._array import backend, to_numpy
from .._validate import positive_int
from ..errors import InvalidInputError
from .base import RuleUpdate, UpdateRule
from .quantile import QuantileRule, quantile_sweep

__all__ = ["BipRule"]


@dataclass(frozen=True)
class BipRule(UpdateRule):
    r"""BIP-style: ``n_iters`` block-coordinate iterations on the batch's capacity-*inequality* dual.

    The BIP formulation caps each expert, :math:`\sum_i x_{ik} \le c_k`, so its
    multipliers are sign-constrained: in this project's convention :math:`p_k \le 0` (only
    an expert at its cap is pushed down). Starting from the previous batch's bias, each
    iteration is the exact minimisation of the batch's LP dual over the token multipliers
    and then over each expert's, projected on the sign constraint:

    .. math::

        \alpha_i = (\gamma_i + p)_{(K+1)}, \qquad
        p_k \leftarrow \min\!\big(0,\; -(\gamma_{\cdot k} - \alpha)_{(c_k + 1)}\big),

    (:func:`~alflb.rules.quantile_sweep`, then the projection). With balanced capacities
    summing to :math:`K T` the inequality form has the same optimal routing as the
    equality form; the projection fixes the free shift (no centring), so the largest bias
    is 0 after an update. Deviation from [BIP]: its ADMM-style loop is written here as
    exact block-coordinate steps (the coordinate minimisers it alternates between); the
    number of iterations per batch is the parameter (default 4). No step size; declares
    ``needs_scores``; integer capacities :math:`\le T`.

    References
    ----------
    .. [BIP] Y. Sun, arXiv:2502.15451 (2025): binary-integer-programming load balancing.

    >>> g = np.array([[1.0, 0.0], [0.9, 0.0], [0.7, 0.0], [0.6, 0.0]])
    >>> BipRule(k=1, n_iters=1).update(np.zeros(2), [4, 0], [2, 2], scores_TE=g).bias_E.tolist()
    [-0.7, 0.0]
    """

    k: int | None = None
    n_iters: int = 4
    name: ClassVar[str] = "bip"
    needs_scores: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.k is not None:
            object.__setattr__(self, "k", positive_int(self.k, "k"))
        object.__setattr__(self, "n_iters", positive_int(self.n_iters, "n_iters"))

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        gamma = to_numpy(scores_TE)
        n_tokens, n_experts = gamma.shape
        cap = to_numpy(capacity_E)
        if np.any(cap != np.round(cap)) or np.any(cap > n_tokens):
            raise InvalidInputError(f"bip needs integer capacities <= T = {n_tokens}, got {cap.tolist()[:8]}")
        k = QuantileRule(k=self.k)._k(load_E, n_tokens, n_experts)
        p = to_numpy(bias_E).copy()
        for _ in range(self.n_iters):
            p = np.minimum(quantile_sweep(gamma, p, cap.astype(np.int64), k), 0.0)
        return RuleUpdate(backend(bias_E).as_like(p, bias_E), state.advanced(), None)
