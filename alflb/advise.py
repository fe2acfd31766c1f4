r"""Rate advice: every rule over a grid of its rate on one score stream, and a recommendation.

Shape legend: ``N`` steps, ``T`` tokens per step, ``E`` experts, ``K`` experts per token,
``R`` rates.

:func:`advise` draws one score array (a stream, a trace, or an array: common random
numbers for every rule and rate), plays each rule causally with
:func:`alflb.simulator.run_policy` at each rate of a log-spaced grid, and measures per
(rule, rate): the steps until ``MaxVio_batch`` first falls below a threshold, the late
``MaxVio_batch`` floor, the late oscillation of the (centred) biases, the static regret
per step against the exact pooled optimum, and for the sign rules the T3 bound

.. math::

    \frac1N \sum_n \max_k |A_k^n - c_k| \le \frac{g(p^0) - \mathrm{OPT}}{2uN}
        + \min(K, E-K)\, \frac1N \sum_n \#\{i : \mathrm{gap}_i(p^n) \le 2u\},

(``proofs_check/t3_balancing.py``; exact for fixed scores, here evaluated with the
pooled dual per step, which for a random stream is an estimate, not a bound), reported
in MaxVio units (divided by the mean capacity). The recommendation for each rule is the
rate with the smallest sum of its ranks in the four measured columns
(:data:`TRADEOFF_COLUMNS`; ties go to the lower late MaxVio).

The grid is in the units of the scores (the bias is added to them): from
:math:`\Delta / (3N)` to :math:`\Delta`, where :math:`\Delta = \max_k p^\star_k - \min_k p^\star_k`
is the spread of the pooled optimal bias. Time scale: the sign rule moves each bias by at
most ``u`` per step, so undoing a score gap :math:`\Delta` takes at least :math:`\Delta/u`
steps (:math:`\Delta/(2u)` when both experts move); a rate below :math:`\Delta / (2N)` cannot
reach :math:`p^\star` within the run.

:func:`measure_mu` estimates the curvature of the expected dual on :math:`\sum p = 0`
near :math:`p^\star` (docs/theory.md section 4), and :func:`auto_decay` builds the ``decay`` rule
with :math:`a = 1/\mu` from it.

Sign convention: the router adds the bias; an overloaded expert's bias goes down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._array import NUMPY
from ._tables import text_table
from ._validate import finite_float, positive_int
from .errors import InvalidInputError
from .metrics import max_violation
from .problem import balanced_capacity
from .regret import batch_dual, pooled_problem
from .rules import DecayRule, UpdateRule, make_rule

__all__ = ["DEFAULT_RULES", "TRADEOFF_COLUMNS", "Advice", "advise", "auto_decay", "measure_mu", "rank_score"]

#: Rules advised by default (every rule with a rate, and the rate-free quantile family).
DEFAULT_RULES = ("sign", "centred", "uniform", "decay", "momentum", "smebu", "ema_proportional",
                 "mirror", "histogram_quantile", "bip")
#: The measured columns the recommendation ranks (lower is better in each).
TRADEOFF_COLUMNS = ("steps_to_threshold", "late_maxvio", "late_oscillation", "regret_per_step")
_SIGN_RULES = ("sign", "centred")


@dataclass(frozen=True)
class Advice:
    """The result of :func:`advise`: one row per (rule, rate), and the rate recommended per rule.

    Attributes
    ----------
    rows : tuple of dict
        ``rule``, ``rate`` (NaN for rate-free rules), the :data:`TRADEOFF_COLUMNS`,
        ``t3_bound`` (sign rules; NaN otherwise), ``score`` (rank sum) and ``recommended``.
    recommended : dict
        Rule name -> recommended rate (NaN for rate-free rules).
    spread : float
        :math:`\\Delta`, the spread of the pooled optimal bias (score units).
    rates_R : ndarray
        The grid.
    config : dict
        Source, sizes, threshold, late window, seed.
    """

    rows: tuple[dict[str, Any], ...]
    recommended: dict[str, float]
    spread: float
    rates_R: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The trade-off table (text), recommended rows marked ``*``."""
        cols = ["rule", "rate", *TRADEOFF_COLUMNS, "t3_bound", "score", "recommended"]
        rows = [{**r, "recommended": "*" if r["recommended"] else "-"} for r in self.rows]
        return text_table(rows, cols, float_format=".3g")

    def explanation(self) -> str:
        """How to read the table: the time scale and the recommendation rule."""
        n = self.config["n_steps"]
        return (
            f"Time scale: a sign step moves each bias by at most u per step, so undoing a score gap "
            f"Delta takes at least Delta/u steps (Delta/(2u) when both experts move). Here Delta = spread "
            f"of p* = {self.spread:.4g} (score units) and N = {n} steps, so u >= Delta/(2N) = "
            f"{self.spread / (2 * n):.3g} is needed to reach p* within the run; larger u reaches it "
            f"sooner but oscillates by about u around it.\n"
            f"steps_to_threshold: first step with MaxVio_batch < {self.config['threshold']} (N if never); "
            f"late_*: the last {self.config['late']:.0%} of the steps; MaxVio_batch = max_k (A_k - c_k)/c_k; "
            f"late_oscillation: mean over experts of the std of the centred bias; regret_per_step: "
            f"static regret against the pooled exact optimum, per step; t3_bound: the T3 bound on the "
            f"mean max|A - c|, in MaxVio units.\n"
            f"Recommended (*): per rule, the smallest sum of ranks over {', '.join(TRADEOFF_COLUMNS)} "
            f"(ties: lower late_maxvio)."
        )

    def figure(self):
        """A bare :class:`matplotlib.figure.Figure`: each column against the rate, one line per rule."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 7), layout="constrained")
        axes = fig.subplots(2, 2).ravel()
        for ax, col in zip(axes, TRADEOFF_COLUMNS, strict=True):
            for rule in self.recommended:
                rows = [r for r in self.rows if r["rule"] == rule]
                if len(rows) < 2:
                    continue
                x = [r["rate"] for r in rows]
                (line,) = ax.plot(x, [r[col] for r in rows], marker="o", ms=3, label=rule)
                best = next(r for r in rows if r["recommended"])
                ax.plot([best["rate"]], [best[col]], marker="*", ms=12, color=line.get_color())
            ax.set_xscale("log")
            ax.set_xlabel("rate (score units)")
            ax.set_ylabel(col)
            ax.axvline(self.spread / (2 * self.config["n_steps"]), color="grey", ls=":", lw=1)
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=7)
        fig.suptitle(f"rate advice on {self.config['source']} (star: recommended; dotted: Delta/(2N))")
        return fig


def rank_score(rows: Sequence[dict[str, Any]], columns: Sequence[str] = TRADEOFF_COLUMNS) -> np.ndarray:
    """Sum over ``columns`` of each row's rank (0 = best = lowest; ties share the lower rank).

    >>> rank_score([{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 1.0}, {"a": 3.0, "b": 2.0}], ["a", "b"]).tolist()
    [2, 1, 3]
    """
    score = np.zeros(len(rows), dtype=np.int64)
    for col in columns:
        v = np.array([r[col] for r in rows], dtype=np.float64)
        score += np.searchsorted(np.sort(v), v, side="left")
    return score


def _pick(rows: Sequence[dict[str, Any]], columns: Sequence[str] = TRADEOFF_COLUMNS) -> int:
    score = rank_score(rows, columns)
    order = sorted(range(len(rows)), key=lambda i: (score[i], rows[i]["late_maxvio"], i))
    return order[0]


def _scores(scores_NTE, stream, trace, layer, n_steps, n_tokens, n_experts, seed) -> tuple[np.ndarray, str]:
    given = sum(x is not None for x in (scores_NTE, stream, trace))
    if given != 1:
        raise InvalidInputError("advise needs exactly one of scores_NTE, stream or trace")
    if trace is not None:
        from .traces import load_trace

        arr = load_trace(trace).scores_NLTE
        if not 0 <= layer < arr.shape[1]:
            raise InvalidInputError(f"layer {layer} out of range: the trace has {arr.shape[1]} layers")
        return np.asarray(arr[:n_steps, layer], dtype=np.float64), f"trace {trace} (layer {layer})"
    if stream is not None:
        from .streams import make_stream

        s = make_stream(stream) if isinstance(stream, str) else stream
        return s.sample(n_steps, n_tokens, n_experts, rng=seed).astype(np.float64), f"stream {s.name}"
    arr = np.asarray(scores_NTE, dtype=np.float64)
    if arr.ndim != 3:
        raise InvalidInputError(f"scores_NTE must be 3-D (N, T, E), got shape {arr.shape}")
    return arr, "scores"


def _t3_bound(scores_NTE, bias_NE, k, u, start_gap, mean_cap) -> float:
    """The T3 right-hand side (tokens) divided by the mean capacity."""
    n_steps, _, n_experts = scores_NTE.shape
    near = 0.0
    for s, p in zip(scores_NTE, bias_NE, strict=True):
        kth, k1th = NUMPY.kth_largest(s + p, k - 1, k)
        near += float(np.count_nonzero(kth - k1th <= 2 * u))
    m = min(k, n_experts - k)
    return (start_gap / (2 * u) / n_steps + m * near / n_steps) / mean_cap if u > 0 else math.inf


def advise(
    scores_NTE: Any = None,
    *,
    stream: Any = None,
    trace: str | None = None,
    layer: int = 0,
    rules: Sequence[str] = DEFAULT_RULES,
    n_rates: int = 7,
    n_steps: int = 200,
    n_tokens: int = 256,
    n_experts: int = 16,
    k: int = 2,
    seed: int = 0,
    threshold: float = 0.2,
    late: float = 0.5,
    solver: str = "fast",
) -> Advice:
    r"""Run ``rules`` over a log-spaced grid of their rate and recommend one rate per rule.

    Give exactly one of ``scores_NTE`` (N, T, E), ``stream`` (a registry name or a
    :class:`~alflb.streams.ScoreStream`; drawn with ``rng=seed``) or ``trace`` (a trace
    file; ``layer``, the first ``n_steps`` steps). Every rule and rate sees the same scores.
    Rates are in score units (the step parameter of each rule: ``u``, ``eps``, or
    ``decay``'s ``a``); rules without a rate (``histogram_quantile``, ``bip``,
    ``quantile``) get one row. See the module docstring for the columns and the choice.

    >>> adv = advise(stream="skewed", rules=("sign",), n_rates=3, n_steps=30, n_tokens=64,
    ...              n_experts=4, k=1)
    >>> len(adv.rows), list(adv.recommended)
    (3, ['sign'])
    """
    from .simulator import run_policy
    from .solvers import solve

    n_rates = positive_int(n_rates, "n_rates")
    threshold = finite_float(threshold, "threshold", minimum=0.0, strict=True)
    late = finite_float(late, "late", minimum=0.0, strict=True)
    if late > 1:
        raise InvalidInputError(f"late must be in (0, 1], got {late}")
    scores, source = _scores(scores_NTE, stream, trace, layer, n_steps, n_tokens, n_experts, seed)
    n, t, e = scores.shape
    if not 1 <= k < e:
        raise InvalidInputError(f"k must satisfy 1 <= k <= E-1 = {e - 1}, got {k}")
    cap = balanced_capacity(t, e, k)
    pooled = solve(pooled_problem(scores, k, cap), method=solver)
    opt = float(pooled.objective)
    pstar = np.asarray(pooled.bias_E, dtype=np.float64)
    spread = float(pstar.max() - pstar.min()) or float(scores.std())
    rates = np.geomspace(spread / (3 * n), spread, n_rates) if n_rates > 1 else np.array([spread / n])
    start_gap = (sum(batch_dual(s, np.zeros(e), k, cap) for s in scores) - opt) / n
    lo = n - max(1, round(late * n))
    rows: list[dict[str, Any]] = []
    recommended: dict[str, float] = {}
    for name in rules:
        base = make_rule(name, **({"k": k} if name in ("histogram_quantile", "bip", "quantile") else {}))
        grid = rates if base.capabilities().step_param else np.array([math.nan])
        rule_rows = []
        for rate in grid:
            rule: UpdateRule = base if math.isnan(rate) else base.with_step(float(rate))
            run = run_policy(rule, scores, k, cap, record_t1=False, solver=solver)
            mv_N = np.asarray(max_violation(run.load_NE, cap), dtype=np.float64)
            below = np.flatnonzero(mv_N < threshold)
            bias = run.bias_NE[lo:] - run.bias_NE[lo:].mean(axis=1, keepdims=True)
            row = {
                "rule": name, "rate": float(rate),
                "steps_to_threshold": int(below[0]) if below.size else n,
                "late_maxvio": float(mv_N[lo:].mean()),
                "late_oscillation": float(bias.std(axis=0).mean()),
                "regret_per_step": float((run.f_N.sum() - opt) / n),
                "t3_bound": (_t3_bound(scores, run.bias_NE, k, float(rate), start_gap, cap.mean())
                             if name in _SIGN_RULES else math.nan),
            }
            rule_rows.append(row)
        best = _pick(rule_rows)
        score = rank_score(rule_rows)
        for i, row in enumerate(rule_rows):
            row["score"] = int(score[i])
            row["recommended"] = i == best
        recommended[name] = rule_rows[best]["rate"]
        rows.extend(rule_rows)
    config = {"source": source, "n_steps": n, "n_tokens": t, "n_experts": e, "k": k, "seed": seed,
              "threshold": threshold, "late": late}
    return Advice(tuple(rows), recommended, spread, rates, config)


# --------------------------------------------------------------------------- curvature
def measure_mu(scores_NTE: Any, k: int, capacity_E: Any = None, *, bias_E: Any = None,
               width: float | None = None) -> float:
    r"""The curvature :math:`\mu` of the expected batch dual on :math:`\sum_k p_k = 0`.

    .. math::

        \mu = \lambda_{\min}\big(P^\top \nabla^2 F(p^\star) P\big), \qquad
        F(p) \approx \frac1N \sum_{n \le N} f_n(p),

    with ``P`` an orthonormal basis of :math:`\mathbf 1^\perp` and the Hessian from central
    second differences of the pooled sample's dual (:func:`alflb.regret.batch_dual`) of
    half-width ``width`` (default: a tenth of the score standard deviation, well above
    the score resolution, as ``proofs_check/strong_convexity.py`` does). Units: tokens
    per squared score unit, per batch of ``T`` tokens. ``bias_E`` defaults to the pooled
    optimum :math:`\hat p^\star`. Returns a float (it may be near 0 for scores with atoms).

    >>> rng = np.random.default_rng(0)
    >>> mu = measure_mu(rng.normal(size=(20, 400, 2)), 1)
    >>> 0.5 * 400 / (2 * np.pi) ** 0.5 < mu < 2 * 400 / (2 * np.pi) ** 0.5
    True
    """
    from .regret import estimate_pstar

    scores = np.asarray(scores_NTE, dtype=np.float64)
    n, t, e = scores.shape
    cap = balanced_capacity(t, e, k) if capacity_E is None else np.asarray(capacity_E)
    p0 = estimate_pstar(scores, k, cap) if bias_E is None else np.asarray(bias_E, dtype=np.float64)
    h = 0.1 * float(scores.std()) if width is None else finite_float(width, "width", minimum=0.0, strict=True)
    flat = scores.reshape(n * t, e)
    cap_pool = n * np.asarray(cap, dtype=np.float64)

    def f(p):  # F(p) per batch
        return batch_dual(flat, p, k, cap_pool) / n

    basis = np.linalg.qr(np.c_[np.ones(e), np.eye(e)[:, : e - 1]])[0][:, 1:]  # (E, E-1)
    d = e - 1
    hess = np.zeros((d, d))
    f0 = f(p0)
    for a in range(d):
        va = h * basis[:, a]
        hess[a, a] = (f(p0 + va) - 2 * f0 + f(p0 - va)) / h**2
        for b in range(a):
            vb = h * basis[:, b]
            hess[a, b] = hess[b, a] = (f(p0 + va + vb) - f(p0 + va - vb) - f(p0 - va + vb)
                                       + f(p0 - va - vb)) / (4 * h**2)
    return float(np.linalg.eigvalsh(hess).min())


def auto_decay(scores_NTE: Any, k: int, *, normalize: bool = False, n0: float = 1.0, **kw: Any) -> DecayRule:
    r"""The ``decay`` rule with :math:`a = 1/\mu`, ``mu`` measured by :func:`measure_mu`.

    With ``normalize=False`` (raw token counts) the step is :math:`1/(\mu (n + n_0))`, the
    logarithmic-regret schedule; with ``normalize=True`` the error is divided by the mean
    capacity :math:`\bar c`, so :math:`a = \bar c / \mu` gives the same steps. ``a`` is in
    score units per token of error (``normalize=False``) or per unit relative error.

    >>> rng = np.random.default_rng(0)
    >>> r = auto_decay(rng.normal(size=(10, 200, 2)), 1)
    >>> r.normalize, 0.005 < r.a < 0.05
    (False, True)
    """
    scores = np.asarray(scores_NTE, dtype=np.float64)
    mu = measure_mu(scores, k, **kw)
    if not mu > 0:
        raise InvalidInputError(f"the measured curvature is {mu:g}: no 1/mu schedule (scores with atoms?)")
    _, t, e = scores.shape
    a = (k * t / e) / mu if normalize else 1.0 / mu
    return DecayRule(a=a, n0=n0, normalize=normalize)
