r"""Regret of an online bias rule against exact comparators (docs/theory.md section 4).

Shape legend: ``N`` steps, ``T`` tokens per step, ``E`` experts, ``K`` experts per token,
``S`` seeds, ``G`` points of a prefix grid.

The per-step loss is the batch dual

.. math::

    f_n(p) = \sum_i \operatorname{TopKSum}_k(\gamma^n_{ik} + p_k) - \sum_k c_k p_k ,

and a causal rule plays ``p^n`` (a function of batches ``< n``). Three regrets:

- **static**: :math:`R_N = \sum_{n \le N} f_n(p^n) - \min_p \sum_{n \le N} f_n(p)`. By strong
  duality the minimum is the optimum of *one pooled assignment problem* over all ``N*T``
  tokens with capacities ``N*c`` (:func:`pooled_optimum`, solved exactly by
  ``alflb.solvers.solve(..., method="fast")``). Any *fixed* bias has static regret
  ``>= 0`` (the comparator is the best fixed bias in hindsight, attained by the pooled
  optimal dual). A causal rule's realised ``R_N`` is ``>= 0`` in expectation on
  stationary streams, but a rule that tracks a drifting stream can beat every fixed bias
  and show a negative ``R_N``: that is what the dynamic regret is for.
- **dynamic**: :math:`\sum_n f_n(p^n) - \sum_n \min_p f_n(p)`, against the per-batch optima
  (:func:`alflb.comparators.batch_optimum` on each batch); it is ``>= 0`` for any play and at least the static regret.
- **pseudo** (the quantity the standard proof bounds): :math:`\sum_n [F(p^n) - F(p^\star)]`
  with :math:`F = \mathbb E f_n` and :math:`p^\star = \arg\min F`. It is estimated by
  :math:`\sum_n [f_n(p^n) - f_n(\hat p^\star)]`, where :math:`\hat p^\star` is the optimal
  dual of a large *independent* pooled sample (:func:`estimate_pstar`); because ``p^n`` is
  independent of batch ``n``, each term is an unbiased estimate of
  :math:`F(p^n) - F(\hat p^\star)`. Only meaningful for stationary streams.

The prefix curve :math:`R_n` (:func:`prefix_regret`) uses, for each prefix ``n``, that
prefix's own pooled optimum; it is computed on a log-spaced grid of ``n``
(:func:`prefix_grid`) so that it costs a handful of pooled solves, not ``N``.

With ``eps_n = 1/(mu n)`` and a ``mu``-strongly convex ``F`` the standard argument [HAK]
gives :math:`\mathbb E R_N \le (G^2 / 2\mu)(1 + \ln N)`; constant steps (the sign rule
included) grow like :math:`\sqrt N` or ``N``. :func:`classify_growth` decides whether
per-seed regret at doubling horizons grows like ``ln N`` (increments per doubling flat
within their interval and a free exponent below 1/2); :func:`fit_growth` only describes a
curve by least squares against ``ln n``, ``sqrt n`` and ``n``.

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915 (regret of ALF-LB).
.. [HAK] E. Hazan, A. Agarwal, S. Kale, Logarithmic regret algorithms for online convex
   optimization, Machine Learning 69 (2007).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> scores_NTE = rng.random((4, 6, 3))
>>> cap = np.full(3, 2)
>>> f_N = np.array([batch_dual(s, np.zeros(3), 1, cap) for s in scores_NTE])
>>> bool(static_regret(f_N, pooled_optimum(scores_NTE, 1, cap)) >= 0)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from ._kernels import fused_route
from .errors import InvalidInputError
from .problem import AssignmentProblem

__all__ = [
    "ConfidenceBand",
    "GrowthFit",
    "GrowthVerdict",
    "batch_dual",
    "classify_growth",
    "confidence_band",
    "dynamic_regret",
    "estimate_pstar",
    "fit_growth",
    "pooled_optimum",
    "pooled_problem",
    "prefix_grid",
    "prefix_regret",
    "pseudo_regret",
    "static_regret",
]


def _check_scores_NTE(scores_NTE: Any) -> np.ndarray:
    arr = np.asarray(scores_NTE)
    if arr.ndim != 3 or min(arr.shape) == 0:
        raise InvalidInputError(f"scores_NTE must be a non-empty 3-D array (N, T, E), got shape {arr.shape}")
    return arr


def batch_dual(scores_TE: Any, bias_E: Any, k: int, capacity_E: Any) -> float:
    r"""The batch dual at ``p``, in float64 (the fused kernel):

    .. math::

        f(p) = \sum_i \operatorname{TopKSum}_k(\gamma_{ik} + p_k) - \sum_k c_k p_k .

    ``scores_TE`` (T, E), ``bias_E`` (E,) with the router adding it, ``capacity_E`` (E,).

    >>> batch_dual(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([-0.5, 0.5]), 1, [1, 1])
    1.0
    """
    bias = np.asarray(bias_E, dtype=np.float64)
    _, value, _ = fused_route(np.asarray(scores_TE), bias, k)
    return float(value - np.asarray(capacity_E, dtype=np.float64) @ bias)


def pooled_problem(scores_NTE: Any, k: int, capacity_E: Any) -> AssignmentProblem:
    r"""One assignment problem over all ``N*T`` tokens with capacities ``N*c``.

    By strong duality its optimum is :math:`\min_p \sum_{n \le N} f_n(p)`.

    >>> pooled_problem(np.zeros((3, 4, 2)), 1, [2, 2]).capacity_E.tolist()
    [6, 6]
    """
    arr = _check_scores_NTE(scores_NTE)
    n_steps, n_tokens, n_experts = arr.shape
    cap = np.asarray(capacity_E, dtype=np.int64)
    return AssignmentProblem(arr.reshape(n_steps * n_tokens, n_experts), k, n_steps * cap)


def pooled_optimum(scores_NTE: Any, k: int, capacity_E: Any, *, method: str = "fast") -> float:
    r"""The static comparator, exact and in float64:

    .. math::

        \min_p \sum_{n \le N} f_n(p) = \mathrm{OPT}(\text{pooled problem}).

    >>> scores_NTE = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    >>> pooled_optimum(scores_NTE, 1, [1, 1])  # three tokens prefer expert 0, which holds two
    3.0
    """
    from .solvers import solve

    return float(solve(pooled_problem(scores_NTE, k, capacity_E), method=method).objective)


def estimate_pstar(scores_NTE: Any, k: int, capacity_E: Any, *, method: str = "fast") -> np.ndarray:
    r"""An optimal dual of a pooled sample: the estimate :math:`\hat p^\star` of ``argmin F``.

    .. math::

        \hat p^\star \in \arg\min_p \sum_{n \le N} f_n(p), \qquad \textstyle\sum_k \hat p^\star_k = 0 .

    Centred (``p*`` is defined modulo a constant); the router adds it, so an expert that
    the scores overload gets a lower value.

    >>> p = estimate_pstar(np.array([[[1.0, 0.0], [1.0, 0.0]]]), 1, [1, 1])
    >>> bool(p[0] < p[1]), float(round(p.sum(), 12))
    (True, 0.0)
    """
    from .solvers import solve

    res = solve(pooled_problem(scores_NTE, k, capacity_E), method=method)
    return np.asarray(res.bias_E, dtype=np.float64)


def prefix_grid(n_steps: int, n_points: int = 12) -> np.ndarray:
    r"""About ``n_points`` log-spaced prefix lengths in ``1..N``, always including ``N`` (int64).

    .. math::

        \mathcal G = \operatorname{unique}\big(\operatorname{round}(N^{j/(P-1)})\big)_{j < P} \cup \{N\}.

    >>> prefix_grid(1000, 5).tolist()
    [1, 6, 32, 178, 1000]
    """
    if n_steps < 1 or n_points < 1:
        raise InvalidInputError(f"need n_steps >= 1 and n_points >= 1, got {n_steps}, {n_points}")
    if n_steps == 1 or (n_points > 1 and n_steps * math.expm1(math.log(n_steps) / (n_points - 1)) < 1):
        # Consecutive points are less than 1 apart: the rounded grid is every integer
        # 1..N, whatever n_points is (so a huge n_points allocates nothing).
        return np.arange(1, n_steps + 1, dtype=np.int64)
    grid = np.unique(np.round(np.geomspace(1, n_steps, n_points)).astype(np.int64))
    return np.union1d(grid, [n_steps]).astype(np.int64)


def static_regret(f_N: Any, pooled_opt: float) -> float:
    r"""Static regret against the best fixed bias in hindsight:

    .. math::

        R_N = \sum_{n \le N} f_n(p^n) - \min_p \sum_{n \le N} f_n(p) .

    ``f_N`` (N,) holds :math:`f_n(p^n)`; ``pooled_opt`` is :func:`pooled_optimum`.

    >>> static_regret([3.0, 2.0, 2.0], 6.5)
    0.5
    """
    return float(np.sum(np.asarray(f_N, dtype=np.float64)) - pooled_opt)


def dynamic_regret(f_N: Any, batch_opt_N: Any) -> float:
    r"""Dynamic regret against the per-batch optima (``>= 0`` for any play):

    .. math::

        R^{\mathrm{dyn}}_N = \sum_{n \le N} \big[f_n(p^n) - \min_p f_n(p)\big] .

    >>> dynamic_regret([3.0, 2.0], [2.5, 2.0])
    0.5
    """
    return float(np.sum(np.asarray(f_N, dtype=np.float64) - np.asarray(batch_opt_N, dtype=np.float64)))


def pseudo_regret(f_N: Any, f_star_N: Any) -> float:
    r"""The estimate of the pseudo-regret (see the module docstring):

    .. math::

        \hat R^{\mathrm{pseudo}}_N = \sum_{n \le N} \big[f_n(p^n) - f_n(\hat p^\star)\big] .

    ``f_star_N`` (N,) holds :math:`f_n(\hat p^\star)`, ``\hat p^\star`` from :func:`estimate_pstar`.

    >>> pseudo_regret([3.0, 2.0], [2.0, 2.5])
    0.5
    """
    return float(np.sum(np.asarray(f_N, dtype=np.float64) - np.asarray(f_star_N, dtype=np.float64)))


def prefix_regret(f_N: Any, grid_G: Any, pooled_opt_G: Any) -> np.ndarray:
    r"""The static regret of each prefix on a grid, shape ``(G,)``:

    .. math::

        R_n = \sum_{m \le n} f_m(p^m) - \min_p \sum_{m \le n} f_m(p), \qquad n \in \mathcal G .

    ``pooled_opt_G`` holds each prefix's own pooled optimum. An empty grid gives an empty
    curve.

    >>> prefix_regret([3.0, 2.0, 2.0], [1, 3], [2.5, 6.5]).tolist()
    [0.5, 0.5]
    """
    f = np.asarray(f_N, dtype=np.float64)
    grid = np.asarray(grid_G, dtype=np.int64)
    if not grid.size:
        return np.zeros(0)
    if grid.min() < 1 or grid.max() > len(f):
        raise InvalidInputError(f"grid points must lie in 1..{len(f)}, got {grid.tolist()}")
    return np.cumsum(f)[grid - 1] - np.asarray(pooled_opt_G, dtype=np.float64)


@dataclass(frozen=True)
class ConfidenceBand:
    """Mean over seeds with a two-sided Student-t confidence band."""

    mean: np.ndarray | float
    lower: np.ndarray | float
    upper: np.ndarray | float
    n_seeds: int
    level: float


def confidence_band(values_S: Any, level: float = 0.95, axis: int = 0) -> ConfidenceBand:
    r"""Mean and ``level`` Student-t interval over ``axis`` (a single seed gives a zero-width band):

    .. math::

        \bar x \pm t_{(1+\ell)/2,\, S-1}\, \frac{s}{\sqrt S},

    ``s`` the sample standard deviation (``ddof=1``) of the ``S`` values, ``\ell`` the level.

    >>> band = confidence_band([1.0, 2.0, 3.0])
    >>> band.mean, round(band.upper - band.mean, 3)
    (2.0, 2.484)
    """
    v = np.asarray(values_S, dtype=np.float64)
    n = v.shape[axis]
    mean = v.mean(axis=axis)
    if n < 2:
        half = np.zeros_like(mean)
    else:
        sem = v.std(axis=axis, ddof=1) / np.sqrt(n)
        half = stats.t.ppf(0.5 + level / 2, n - 1) * sem
    if np.ndim(mean) == 0:
        mean, half = float(mean), float(half)
    return ConfidenceBand(mean, mean - half, mean + half, int(n), float(level))


@dataclass(frozen=True)
class GrowthFit:
    """Least-squares fits ``R_n ~ a + b h(n)`` for ``h`` in ``ln n``, ``sqrt n``, ``n``.

    A description of a curve, not a verdict on its growth: see :func:`classify_growth`.

    Attributes
    ----------
    coefficients : dict
        ``{"log": (a, b), "sqrt": (a, b), "linear": (a, b)}``.
    r_squared : dict
        Coefficient of determination of each fit.
    best : str
        The model with the smallest residual sum of squares (all have two parameters),
        except that it is never ``"log"`` when ``verdict`` is ``"growing"``.
    verdict : str or None
        :func:`classify_growth`'s verdict when per-seed curves at >= 4 doubling horizons
        were given, else ``None``.
    """

    coefficients: dict[str, tuple[float, float]]
    r_squared: dict[str, float]
    best: str
    verdict: str | None = None


_GROWTH = {"log": np.log, "sqrt": np.sqrt, "linear": lambda n: n.astype(np.float64)}


def fit_growth(n_G: Any, regret_G: Any) -> GrowthFit:
    r"""Fit ``R_n`` against ``ln n``, ``sqrt n`` and ``n``; report the best (needs >= 3 points).

    .. math::

        (a, b) = \arg\min_{a, b} \sum_{n \in \mathcal G} \big(R_n - a - b\, h(n)\big)^2,
        \qquad h \in \{\ln n, \sqrt n, n\},

    and ``best`` is the ``h`` with the smallest residual sum of squares.

    .. deprecated::
        As a test of logarithmic regret. This is a descriptive fit, not a verdict: on
        short horizons a constant step's transient fits ``ln n`` best although its regret
        grows. Decide growth with :func:`classify_growth`. Given per-seed curves
        ``regret_SG`` (S >= 2) at doubling horizons (>= 4), the fit is of the seed mean
        and the classifier runs too: ``best`` is never ``"log"`` for data it calls
        ``"growing"`` (the best of the other two is reported, and ``verdict`` says why).

    Parameters
    ----------
    n_G : array (G,)
        Horizons.
    regret_G : array (G,) or (S, G)
        Regret at each horizon, one curve or one per seed.

    >>> n = np.array([1, 4, 16, 64, 256])
    >>> fit_growth(n, 3.0 + 2.0 * np.log(n)).best
    'log'
    """
    n = np.asarray(n_G, dtype=np.float64)
    r_all = np.asarray(regret_G, dtype=np.float64)
    r = r_all.mean(axis=0) if r_all.ndim == 2 else r_all
    if n.shape != r.shape or n.ndim != 1 or len(n) < 3:
        raise InvalidInputError(f"need matching 1-D arrays of >= 3 points, got {n.shape} and {r_all.shape}")
    coefs, r2, sse = {}, {}, {}
    total = float(np.sum((r - r.mean()) ** 2))
    for name, h in _GROWTH.items():
        design = np.column_stack([np.ones_like(n), h(n)])
        beta, *_ = np.linalg.lstsq(design, r, rcond=None)
        resid = r - design @ beta
        sse[name] = float(resid @ resid)
        coefs[name] = (float(beta[0]), float(beta[1]))
        r2[name] = 1.0 - sse[name] / total if total > 0 else 1.0
    best = min(sse, key=sse.get)
    verdict = None
    if r_all.ndim == 2 and r_all.shape[0] >= 2 and len(n) >= 4 and np.allclose(n[1:] / n[:-1], 2.0):
        verdict = classify_growth(n, r_all).verdict
        if verdict == "growing" and best == "log":
            best = min((k for k in sse if k != "log"), key=sse.get)
    return GrowthFit(coefs, r2, best, verdict)


# Flat: the increments of sqrt(N) grow by a factor sqrt(2) per doubling; flatness must
# exclude that (upper limit of the relative slope below sqrt(2) - 1) while including 0.
FLAT_MAX = 2**0.5 - 1
EXPONENT_MAX = 0.5  # the exponent of sqrt(N), which ln N must be shown to be below


@dataclass(frozen=True)
class GrowthVerdict:
    """:func:`classify_growth`'s verdict and the statistics it rests on (95% intervals)."""

    verdict: str  # "ln N", "growing" or "inconclusive"
    horizons: list[int]
    increments_mean: list[float]  # per doubling, mean over seeds
    increments_ci: list[tuple[float, float]]  # t-interval over seeds per doubling
    rel_slope: float  # relative growth of the tail increments per doubling
    rel_slope_ci: tuple[float, float]
    exponent: float  # free exponent of the seed-mean regret on the tail horizons
    exponent_ci: tuple[float, float]  # seed bootstrap
    n_seeds: int
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        inc = ", ".join(f"{m:.3g}" for m in self.increments_mean)
        return (f"{self.verdict}: increments/doubling [{inc}], rel. slope {self.rel_slope:.3f} "
                f"[{self.rel_slope_ci[0]:.3f}, {self.rel_slope_ci[1]:.3f}], exponent "
                f"{self.exponent:.3f} [{self.exponent_ci[0]:.3f}, {self.exponent_ci[1]:.3f}], "
                f"{self.n_seeds} seeds")


def _t_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    n = len(x)
    m = float(np.mean(x))
    if n < 2:
        return (m, m)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * np.std(x, ddof=1) / np.sqrt(n))
    return (m - half, m + half)


def _exponent(horizons: np.ndarray, mean_r: np.ndarray) -> float:
    if np.any(mean_r <= 0):
        return float("nan")
    return float(np.polyfit(np.log(horizons), np.log(mean_r), 1)[0])


def classify_growth(horizons_J: Any, regret_SJ: Any, n_tail: int | None = None, n_boot: int = 2000,
                    seed: int = 0) -> GrowthVerdict:
    r"""Is regret logarithmic? A classifier that a constant step cannot pass.

    For regret :math:`R_s(N_j)` of seeds ``s`` at doubling horizons :math:`N_j = N_0 2^j`:

    .. math::

        D_{sj} = R_s(N_{j+1}) - R_s(N_j), \qquad
        \rho_s = \frac{\operatorname{slope}_j D_{sj}}{\overline{D}}, \qquad
        e = \operatorname{slope}\big(\ln N_j,\ \ln \textstyle\frac1S \sum_s R_s(N_j)\big),

    on the last ``n_tail`` doublings (default half of them, at least 3). For
    :math:`R = a + b \ln N` the increments are constant (:math:`\rho = 0`) and the local
    exponent is :math:`1/\ln N`; for :math:`N^e` the increments grow by :math:`2^e` per
    doubling (:math:`\rho \approx 2^e - 1`). Intervals: a 95% t-interval over seeds for
    :math:`\rho` and each doubling's increment, a 95% seed bootstrap (``n_boot`` draws,
    ``seed``) for :math:`e`. Verdict:

    - ``"ln N"`` iff the mean increment is positive, the :math:`\rho` interval contains 0
      and lies below :math:`\sqrt 2 - 1` (the growth of :math:`\sqrt N`'s increments), and
      the exponent's upper limit is below 1/2;
    - ``"growing"`` iff the :math:`\rho` interval lies above 0 (positive increments) or the
      exponent's lower limit is at least 1/2;
    - ``"inconclusive"`` otherwise (too few seeds or horizons to tell).

    Parameters
    ----------
    horizons_J : array (J,)
        Doubling horizons, ``J >= 4``.
    regret_SJ : array (S, J)
        Regret of each seed at each horizon.

    Raises :class:`~alflb.errors.InvalidInputError` (a ``ValueError``) for other shapes
    or horizons that do not double.

    >>> rng = np.random.default_rng(0)
    >>> n = 2.0 ** np.arange(4, 13)
    >>> noise = rng.normal(size=(16, len(n))) * 0.3
    >>> classify_growth(n, 5 + 3 * np.log(n) + noise).verdict
    'ln N'
    >>> classify_growth(n, np.sqrt(n) + noise).verdict
    'growing'
    """
    n = np.asarray(horizons_J, dtype=np.float64)
    r = np.asarray(regret_SJ, dtype=np.float64)
    if r.ndim != 2 or n.ndim != 1 or r.shape[1] != len(n) or len(n) < 4:
        raise InvalidInputError(f"need (S, J) regret with J = len(horizons) >= 4, got {r.shape}")
    if not np.allclose(n[1:] / n[:-1], 2.0):
        raise InvalidInputError("horizons must double")
    n_seeds = r.shape[0]
    inc = np.diff(r, axis=1)  # (S, J-1)
    n_tail = n_tail or max(3, inc.shape[1] // 2)
    tail = inc[:, -n_tail:]
    level = float(tail.mean())
    j = np.arange(n_tail, dtype=np.float64)
    slopes = np.polyfit(j, tail.T, 1)[0] / abs(level) if level != 0 else np.full(n_seeds, np.nan)
    rel = float(np.mean(slopes))
    rel_ci = _t_ci(slopes)
    tail_h = n[-(n_tail + 1):]
    expo = _exponent(tail_h, r[:, -(n_tail + 1):].mean(axis=0))
    rng = np.random.default_rng(seed)
    boots = np.array([_exponent(tail_h, r[rng.integers(n_seeds, size=n_seeds), -(n_tail + 1):].mean(axis=0))
                      for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    expo_ci = ((float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)))
               if len(boots) > n_boot // 2 else (float("nan"), float("nan")))
    flat = rel_ci[0] <= 0.0 <= rel_ci[1] and rel_ci[1] < FLAT_MAX
    if level > 0 and flat and expo_ci[1] < EXPONENT_MAX:
        verdict = "ln N"
    elif (level > 0 and rel_ci[0] > 0) or expo_ci[0] >= EXPONENT_MAX:
        verdict = "growing"
    else:
        verdict = "inconclusive"
    return GrowthVerdict(verdict, [int(h) for h in n], [float(v) for v in inc.mean(axis=0)],
                         [_t_ci(inc[:, i]) for i in range(inc.shape[1])], rel, rel_ci, expo, expo_ci,
                         n_seeds)
