r"""Histogram quantile balancing: the quantile rule estimated from summed per-expert histograms.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token, ``B`` histogram bins
(``B + 2`` with the under- and overflow bins).

Sign convention: the router adds the bias; an overloaded expert's bias goes down. This
project's ``p`` is minus the quantile dual ``beta`` of Megatron-core and Kimi K3 (they
route on ``gamma - beta``).

Data-parallel semantics: everything an update reads from the scores is a *sum* over
tokens (the histogram counts, and for the micro-batch scope the sum of per-micro-batch
estimates and their number), so a trainer all-reduces the :class:`HistogramAccumulator`
fields with a sum over the micro-batches and the data-parallel ranks (never over tensor
parallelism, whose ranks see the same tokens) and calls :meth:`HistogramQuantileRule.finalise`.
The bin edges depend only on the bias, which every rank holds identically, so summed
counts are exactly the counts of the concatenated global batch.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._array import backend, check_scores, is_torch, to_numpy
from .._validate import choice, finite_float, positive_int
from ..errors import InvalidInputError
from ._checks import check_flag, check_unit_interval, infer_k
from .base import RuleState, RuleUpdate, UpdateRule

__all__ = ["HistogramAccumulator", "HistogramQuantileRule", "histogram_edges", "histogram_quantiles"]

SCOPES = ("global_batch", "micro_batch")


def histogram_edges(bias_E: Any, n_bins: int, margin: float = 1.0) -> tuple[float, float]:
    r"""The histogram range :math:`[\min_k p_k - m,\ \max_k p_k + m]` (docs/theory.md section 3).

    The histogrammed values :math:`\alpha_i - \gamma_{ik}` lie in this range when the
    scores lie in an interval of width ``margin`` (sigmoid scores and ``m = 1``); values
    outside fall in the under- and overflow bins, which clamps one update's move to the
    range. ``margin`` is in the units of the scores. Returns ``(lo, hi)``.

    >>> histogram_edges(np.array([-0.5, 0.5]), 1000)
    (-1.5, 1.5)
    """
    p = to_numpy(bias_E)
    positive_int(n_bins, "n_bins")
    return float(p.min()) - margin, float(p.max()) + margin


@dataclass(frozen=True)
class HistogramAccumulator:
    r"""What one optimiser step has gathered so far: every field is a sum over tokens.

    Attributes
    ----------
    counts_EB : ndarray or torch.Tensor of shape (E, B + 2), int64
        Per expert, the histogram of :math:`w_{ik} = \alpha_i - \gamma_{ik}` (bin 0: below
        ``lo``; bin ``B + 1``: at or above ``hi``). Global-batch scope.
    bias_sum_E : ndarray or torch.Tensor of shape (E,), float64
        Sum of the per-micro-batch estimates (micro-batch scope; zeros otherwise).
    n_batches : int
        Micro-batches (times ranks) accumulated.
    n_tokens : int
        Tokens accumulated.
    lo, hi : float
        The histogram range (equal on every rank: it depends on the bias only).

    All-reduce (sum) ``counts_EB``, ``bias_sum_E``, ``n_batches`` and ``n_tokens`` over
    data-parallel ranks; :meth:`merged` does the same for objects in one process.
    """

    counts_EB: Any
    bias_sum_E: Any
    n_batches: int
    n_tokens: int
    lo: float
    hi: float

    def merged(self, other: HistogramAccumulator) -> HistogramAccumulator:
        """The sum of two accumulators of the same step (same range), as an all-reduce gives.

        >>> rule = HistogramQuantileRule(k=1, n_bins=4)
        >>> g = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> a = rule.accumulate(g[:1], np.zeros(2)).merged(rule.accumulate(g[1:], np.zeros(2)))
        >>> a.n_tokens, a.counts_EB.sum(axis=1).tolist()
        (2, [2, 2])
        """
        if (self.lo, self.hi) != (other.lo, other.hi) or tuple(self.counts_EB.shape) != tuple(other.counts_EB.shape):
            raise InvalidInputError(
                "accumulators of different histogram ranges or shapes cannot be merged: every rank "
                "must accumulate with the same bias"
            )
        return dataclasses.replace(
            self, counts_EB=self.counts_EB + other.counts_EB, bias_sum_E=self.bias_sum_E + other.bias_sum_E,
            n_batches=self.n_batches + other.n_batches, n_tokens=self.n_tokens + other.n_tokens,
        )


def histogram_quantiles(counts_EB: Any, lo: float, hi: float, rank_E: Any) -> Any:
    r"""Per expert, the point where the histogram's interpolated CDF reaches ``rank_E``.

    With ``C_b`` the count below bin ``b`` and ``n_b`` its count, the answer lies in the
    bin with :math:`C_b \le r < C_b + n_b` at :math:`\text{lo}_b + h (r - C_b)/n_b`
    (``h`` the bin width): below it lie ``r`` of the values, and the bin is the one that
    holds the value of 0-based rank ``r`` (the one :func:`~alflb.rules.quantile_sweep`
    returns). A rank in the underflow bin gives ``lo``; in the overflow bin, or at or past
    the total count (every token kept), ``hi``. Same backend as ``counts_EB``.

    >>> c = np.array([[0, 1, 1, 0, 0, 0]])  # 4 bins over [0, 4): values in bins 0 and 1
    >>> histogram_quantiles(c, 0.0, 4.0, np.array([1.0])).tolist()
    [1.0]
    """
    xp = backend(counts_EB)
    n_bins = counts_EB.shape[1] - 2
    width = (hi - lo) / n_bins
    if xp.is_torch:
        torch = xp.torch
        counts = counts_EB.to(torch.float64)
        rank = torch.as_tensor(to_numpy(rank_E), dtype=torch.float64, device=counts.device).reshape(-1, 1)
        cum = torch.cumsum(counts, dim=1)
        b = torch.clamp((cum <= rank).sum(dim=1), max=n_bins + 1)  # first bin with cum > r
        below = torch.gather(cum - counts, 1, b[:, None])[:, 0]
        n_b = torch.gather(counts, 1, b[:, None])[:, 0]
        frac = torch.where(n_b > 0, (rank[:, 0] - below) / torch.clamp(n_b, min=1.0), torch.zeros_like(n_b))
        x = lo + width * (b.to(torch.float64) - 1 + frac)
        return torch.clamp(x, lo, hi)
    counts = np.asarray(counts_EB, dtype=np.float64)
    rank = np.asarray(rank_E, dtype=np.float64).reshape(-1, 1)
    cum = np.cumsum(counts, axis=1)
    b = np.minimum((cum <= rank).sum(axis=1), n_bins + 1)
    rows = np.arange(counts.shape[0])
    below = (cum - counts)[rows, b]
    n_b = counts[rows, b]
    frac = np.divide(rank[:, 0] - below, n_b, out=np.zeros_like(n_b), where=n_b > 0)
    return np.clip(lo + width * (b - 1 + frac), lo, hi)


@dataclass(frozen=True)
class HistogramQuantileRule(UpdateRule):
    r"""Global-batch quantile balancing estimated with per-expert histograms (Kimi K3).

    For the tokens :math:`i` of the global batch routed with ``p``:

    .. math::

        \alpha_i = (\gamma_i + p)_{(K+1)}, \qquad w_{ik} = \alpha_i - \gamma_{ik}, \qquad
        \hat p_k = Q_k(c_k), \qquad
        p \leftarrow \text{ema}\, p + (1 - \text{ema})\, \hat p, \quad
        p \leftarrow p - \bar p \;(\text{if } \texttt{center}),

    where :math:`v_{(j)}` is the ``j``-th largest entry and :math:`Q_k(r)` the point where
    the histogram of :math:`\{w_{ik}\}_i` (``n_bins`` bins over
    :func:`histogram_edges`, half-width ``margin`` in score units) has ``r`` values below
    it (:func:`histogram_quantiles`). Token ``i`` picks expert ``k`` when
    :math:`\gamma_{ik} + p_k > \alpha_i`, i.e. :math:`w_{ik} < p_k`, so after the update
    expert ``k`` keeps its ``c_k`` best tokens (those of smallest :math:`w_{ik}`). This is
    :func:`~alflb.rules.quantile_sweep` (:class:`~alflb.rules.QuantileRule`) up to the bin
    width :math:`(\text{hi} - \text{lo})/B`, but the statistic is a sum over tokens, so it
    is exact under data parallelism where the sorted column quantile is not.

    On the sign: Megatron-core and Kimi K3 route on :math:`\gamma - \beta` and set
    :math:`\beta_k` to the quantile of :math:`\gamma_{ik} - \alpha_i` from above; the bias
    the router adds here is :math:`p = -\beta` (tests pin this).

    ``scope="micro_batch"`` estimates :math:`\hat p` on each micro-batch (histogram of that
    micro-batch, capacity scaled to its tokens) and averages the estimates, as Megatron's
    per-micro-batch quantile balancing does; ``"global_batch"`` (default) sums the
    histograms first. In the simulator one step's batch is cut into ``micro_batches``
    equal parts for the micro-batch scope. ``capacity_E`` may be fractional. No step size:
    ``step_E`` is ``None``.

    Parameters
    ----------
    k : int, optional
        Experts per token; default :math:`\sum_k A_k / T` in :meth:`update` (required by
        :meth:`accumulate` when not set here).
    n_bins : int
        Histogram bins ``B`` (default 1000: Marin measured no gain from 4000).
    margin : float
        Half-width added around :math:`[\min p, \max p]`, in score units (default 1).
    scope : {"global_batch", "micro_batch"}
        Estimation scope.
    micro_batches : int
        Micro-batches a simulator step is cut into for ``scope="micro_batch"``.
    ema : float
        Weight of the old bias, in [0, 1) (default 0).
    center : bool
        Subtract the mean (default on).

    References
    ----------
    .. [K3] Moonshot AI, Kimi K3 (2026): global-batch quantile balancing with histograms.
    .. [Su] J. Su, quantile balancing (2026); Megatron-core's router (quantile balancing,
       ``--moe-router-quantile-balancing-estimation-scope``, ``--moe-router-qb-num-bins``).

    >>> g = np.array([[1.0, 0.0], [0.9, 0.0], [0.7, 0.0], [0.6, 0.0]])
    >>> r = HistogramQuantileRule(k=1, n_bins=2000, center=False)
    >>> r.update(np.zeros(2), [4, 0], [2, 2], scores_TE=g).bias_E.round(3).tolist()
    [-0.7, 0.0]
    """

    k: int | None = None
    n_bins: int = 1000
    margin: float = 1.0
    scope: str = "global_batch"
    micro_batches: int = 1
    ema: float = 0.0
    center: bool = True
    name: ClassVar[str] = "histogram_quantile"
    needs_scores: ClassVar[bool] = True
    #: The score statistic is a sum (``HistogramAccumulator``): all-reduce it, then finalise.
    reducible_scores: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.k is not None:
            object.__setattr__(self, "k", positive_int(self.k, "k"))
        object.__setattr__(self, "n_bins", positive_int(self.n_bins, "n_bins"))
        object.__setattr__(self, "margin", finite_float(self.margin, "margin", minimum=0.0, strict=True))
        choice(self.scope, "scope", SCOPES)
        object.__setattr__(self, "micro_batches", positive_int(self.micro_batches, "micro_batches"))
        object.__setattr__(self, "ema", check_unit_interval(self.ema, "ema"))
        check_flag(self.center, "center")

    # ---- the two halves a trainer calls
    def accumulate(self, scores_TE: Any, bias_E: Any, acc: HistogramAccumulator | None = None,
                   *, k: int | None = None, capacity_E: Any = None) -> HistogramAccumulator:
        r"""Add one micro-batch (routed with ``bias_E``) to ``acc`` and return the sum.

        ``scores_TE`` (T, E) numpy or torch; the histogram lives on the scores' device.
        The micro-batch scope also needs this micro-batch's ``capacity_E`` (E,), default
        the balanced :math:`K T / E`.

        >>> rule = HistogramQuantileRule(k=1, n_bins=10)
        >>> rule.accumulate(np.eye(2), np.zeros(2)).counts_EB.shape
        (2, 12)
        """
        check_scores(scores_TE)
        kk = self._k_given(k)
        n_tokens, n_experts = scores_TE.shape
        if not 1 <= kk <= n_experts - 1:
            raise InvalidInputError(f"K must satisfy 1 <= K <= E-1 = {n_experts - 1}, got {kk}")
        p = to_numpy(bias_E)
        if p.shape != (n_experts,):
            raise InvalidInputError(f"bias_E must have shape (E,) = ({n_experts},), got {p.shape}")
        lo, hi = histogram_edges(p, self.n_bins, self.margin)
        if acc is not None and (acc.lo, acc.hi) != (lo, hi):
            raise InvalidInputError("the accumulator was started with another bias: one step, one bias")
        counts = _histogram(scores_TE, p, kk, lo, hi, self.n_bins)
        bias_sum = 0.0 * counts[:, 0] + 0.0  # (E,) zeros in the counts' backend
        bias_sum = bias_sum.double() if is_torch(bias_sum) else bias_sum.astype(np.float64)
        if self.scope == "micro_batch":
            cap = (np.full(n_experts, kk * n_tokens / n_experts) if capacity_E is None
                   else to_numpy(capacity_E) * np.ones(n_experts))
            est = histogram_quantiles(counts, lo, hi, cap)
            bias_sum = bias_sum + est
            counts = 0 * counts
        new = HistogramAccumulator(counts, bias_sum, 1, n_tokens, lo, hi)
        return new if acc is None else acc.merged(new)

    def finalise(self, bias_E: Any, acc: HistogramAccumulator, capacity_E: Any,
                 state: RuleState | None = None) -> RuleUpdate:
        r"""The update from a (summed) accumulator: quantiles, EMA, centring.

        ``capacity_E`` (E,) or scalar: the global batch's capacities (``c_k = K T / E``).
        Returns the new bias in the backend, dtype and device of ``bias_E``.

        >>> rule = HistogramQuantileRule(k=1, n_bins=4000, center=False)
        >>> g = np.array([[1.0, 0.0], [0.9, 0.0], [0.7, 0.0], [0.6, 0.0]])
        >>> acc = rule.accumulate(g, np.zeros(2))
        >>> rule.finalise(np.zeros(2), acc, 2).bias_E.round(3).tolist()
        [-0.7, 0.0]
        """
        if not isinstance(acc, HistogramAccumulator):
            raise InvalidInputError(f"acc must be a HistogramAccumulator, got {type(acc).__name__}")
        xp = backend(bias_E)
        p_old = to_numpy(bias_E)
        n_experts = p_old.shape[0]
        if tuple(acc.counts_EB.shape) != (n_experts, self.n_bins + 2):
            raise InvalidInputError(
                f"acc.counts_EB must have shape (E, B + 2) = ({n_experts}, {self.n_bins + 2}), "
                f"got {tuple(acc.counts_EB.shape)}"
            )
        if (acc.lo, acc.hi) != histogram_edges(p_old, self.n_bins, self.margin):
            raise InvalidInputError("the accumulator was gathered with another bias than bias_E")
        if state is None:
            state = self.init_state(n_experts, like=bias_E)
        if self.scope == "micro_batch":
            p_new = to_numpy(acc.bias_sum_E) / acc.n_batches
        else:
            cap = to_numpy(capacity_E) * np.ones(n_experts)
            p_new = to_numpy(histogram_quantiles(acc.counts_EB, acc.lo, acc.hi, cap))
        p = self.ema * p_old + (1.0 - self.ema) * p_new
        if self.center:
            p = p - p.mean()
        return RuleUpdate(xp.as_like(p, xp.asarray(bias_E), bias=True), state.advanced(), None)

    # ---- the registry interface
    def _k_given(self, k: int | None) -> int:
        kk = self.k if k is None else k
        if kk is None:
            raise InvalidInputError("histogram_quantile needs K: set k on the rule or pass k=")
        return positive_int(kk, "k")

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        n_tokens = scores_TE.shape[0]
        k = infer_k(self.k, load_E, n_tokens, scores_TE.shape[1])
        parts = self.micro_batches if self.scope == "micro_batch" else 1
        if parts > n_tokens:
            raise InvalidInputError(f"micro_batches = {parts} exceeds the batch's T = {n_tokens} tokens")
        cap = to_numpy(capacity_E)
        acc = None
        bounds = np.linspace(0, n_tokens, parts + 1).round().astype(int)
        for a, b in itertools.pairwise(bounds):
            acc = self.accumulate(scores_TE[a:b], bias_E, acc, k=k, capacity_E=cap * (b - a) / n_tokens)
        return self.finalise(bias_E, acc, cap, state)


def _histogram(scores_TE: Any, bias_E: np.ndarray, k: int, lo: float, hi: float, n_bins: int) -> Any:
    r"""Per-expert counts ``(E, B + 2)`` of :math:`\alpha_i - \gamma_{ik}` (float64 values)."""
    n_experts = scores_TE.shape[1]
    width = (hi - lo) / n_bins
    if is_torch(scores_TE):
        import torch

        g = scores_TE.detach().to(torch.float64)
        p = torch.as_tensor(bias_E, dtype=torch.float64, device=g.device)
        alpha_T = torch.topk(g + p, k + 1, dim=1, sorted=True).values[:, k]  # (K+1)-th largest
        w_TE = alpha_T[:, None] - g
        idx = torch.clamp(torch.floor((w_TE - lo) / width), -1, n_bins).to(torch.int64) + 1
        flat = idx + (n_bins + 2) * torch.arange(n_experts, device=g.device)[None, :]
        return torch.bincount(flat.reshape(-1), minlength=n_experts * (n_bins + 2)).reshape(n_experts, n_bins + 2)
    g = to_numpy(scores_TE)
    v = g + bias_E
    alpha_T = -np.partition(-v, k, axis=1)[:, k]  # (K+1)-th largest
    w_TE = alpha_T[:, None] - g
    idx = np.clip(np.floor((w_TE - lo) / width), -1, n_bins).astype(np.int64) + 1
    flat = idx + (n_bins + 2) * np.arange(n_experts)[None, :]
    return np.bincount(flat.reshape(-1), minlength=n_experts * (n_bins + 2)).reshape(n_experts, n_bins + 2)
