r"""Rules driven by smoothed loads: ``smebu``, ``ema_proportional``, ``mirror``.

Shape legend: ``E`` experts. Sign convention: the router adds the bias; an overloaded
expert's bias goes down. Each keeps one ``(E,)`` buffer in ``RuleState.velocity_E``
(a momentum or an exponential moving average; zero at the start). None is a dual step of
the form :math:`\varepsilon (c - A)` with :math:`\varepsilon \ge 0` on the current loads
(they smooth over past loads), so ``step_E`` is ``None``.

Units: ``u`` is in score units (the bias is added to the scores) per unit of the rule's
error signal, which each docstring states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._array import backend
from .._validate import finite_float
from ..errors import InvalidInputError
from ..schedules import check_step
from ._checks import check_flag, check_unit_interval, mean_load
from .base import RuleState, RuleUpdate, UpdateRule

__all__ = ["EmaProportionalRule", "MirrorRule", "SmebuRule"]


def _buffer(state: RuleState, bias_E: Any) -> Any:
    """The state's ``velocity_E`` in the bias's backend (zeros when absent), shape-checked."""
    v = state.velocity_E
    if v is None:
        return 0.0 * bias_E
    v = backend(bias_E).as_like(v, bias_E)
    if tuple(v.shape) != tuple(bias_E.shape):
        raise InvalidInputError(
            f"state.velocity_E must have shape {tuple(bias_E.shape)}, got {tuple(v.shape)}"
        )
    return v


@dataclass(frozen=True)
class SmebuRule(UpdateRule):
    r"""Soft-clamped, momentum, mean-centred bias update (SMEBU-like, Arcee Trinity).

    .. math::

        e_k = \frac{c_k - A_k}{\bar c}, \quad
        v \leftarrow \beta v + (1 - \beta) \tanh(e / s), \quad
        p \leftarrow p + u\, v, \quad p \leftarrow p - \bar p \;(\text{if } \texttt{center}),

    with :math:`\bar c = \sum_k c_k / E`. The clamp comes *before* the momentum (the
    ``momentum`` rule clamps after it), so :math:`|v_k| < 1` and one update moves a bias by
    less than ``u`` (score units). For :math:`s \to 0`, :math:`\beta = 0` it is the centred
    sign rule. The constants of the published variant are not known: ``u``, ``s``,
    ``beta`` are parameters, and the defaults are this project's choice.

    Parameters
    ----------
    u : float
        Step, score units per unit of :math:`v` (default ``1e-3``, the sign rule's ``u``).
    s : float
        Soft-clamp scale of the normalised error, dimensionless (default 1).
    beta : float
        Momentum in [0, 1) (default 0.9).
    center : bool
        Subtract the mean of ``p`` after the step (default on).

    References
    ----------
    .. [AT] Arcee AI, Trinity models (2025-2026): SMEBU bias update.

    >>> import numpy as np
    >>> out = SmebuRule(u=1.0, s=1.0, beta=0.0).update(np.zeros(2), [2, 0], [1, 1])
    >>> out.bias_E.round(6).tolist()
    [-0.761594, 0.761594]
    """

    u: float = 1e-3
    s: float = 1.0
    beta: float = 0.9
    center: bool = True
    name: ClassVar[str] = "smebu"
    step_param: ClassVar[str | None] = "u"
    state_fields: ClassVar[tuple[str, ...]] = ("velocity_E",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "u", check_step(self.u, "u"))
        object.__setattr__(self, "s", finite_float(self.s, "s", minimum=0.0, strict=True))
        object.__setattr__(self, "beta", check_unit_interval(self.beta, "beta"))
        check_flag(self.center, "center")

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        xp = backend(bias_E)
        err = (capacity_E - load_E) / mean_load(capacity_E)
        v = self.beta * _buffer(state, bias_E) + (1.0 - self.beta) * xp.tanh(err / self.s)
        p = bias_E + self.u * v
        if self.center:
            p = p - p.mean()
        return RuleUpdate(p, state.advanced(velocity_E=v), None)


def _fraction_ema(rule: Any, state: RuleState, bias_E: Any, load_E: Any) -> tuple[Any, Any]:
    r"""The EMA buffer ``m`` after this update and its bias-corrected value :math:`m/(1-\beta^n)`."""
    m = rule.beta * _buffer(state, bias_E) + (1.0 - rule.beta) * load_E / load_E.sum().clip(min=1)
    corr = 1.0 - rule.beta ** (state.n_updates + 1)
    return m, m / corr


@dataclass(frozen=True)
class EmaProportionalRule(UpdateRule):
    r"""Proportional step on an EMA of load fractions, mean-centred and capped (axolotl).

    .. math::

        m \leftarrow \beta m + (1 - \beta) \frac{A}{\sum_j A_j}, \quad
        \hat f = \frac{m}{1 - \beta^{n}}, \quad
        p \leftarrow p + u \Big(\frac{c}{\sum_j c_j} - \hat f\Big), \quad
        p \leftarrow p - \bar p, \quad p \leftarrow \mathrm{clip}(p, -\text{cap}, \text{cap}),

    (``n`` counts updates from 1; the correction makes the first :math:`\hat f` the first
    fraction, as Adam's does). In the balanced case :math:`c / \sum c = 1/E`. The error is
    a difference of fractions (at most 1 in size), so ``u`` is score units per unit
    fraction: one step moves a bias by at most ``u``. The cap bounds :math:`|p_k|`; the
    clip comes after the centring so the bound holds exactly.

    Parameters
    ----------
    u : float
        Step, score units per unit load fraction (default 0.01; 0.005-0.05 is the range
        used for fine-tuning).
    beta : float
        EMA coefficient in [0, 1) (default 0.9).
    cap : float
        Bound on :math:`|p_k|`, score units (default 1).

    References
    ----------
    .. [AX] axolotl: auxiliary-loss-free MoE load balancing plugin (EMA of load fractions).

    >>> import numpy as np
    >>> EmaProportionalRule(u=1.0, beta=0.0, cap=0.1).update(np.zeros(2), [3, 1], [2, 2]).bias_E.tolist()
    [-0.1, 0.1]
    """

    u: float = 0.01
    beta: float = 0.9
    cap: float = 1.0
    name: ClassVar[str] = "ema_proportional"
    step_param: ClassVar[str | None] = "u"
    state_fields: ClassVar[tuple[str, ...]] = ("velocity_E",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "u", check_step(self.u, "u"))
        object.__setattr__(self, "beta", check_unit_interval(self.beta, "beta"))
        object.__setattr__(self, "cap", finite_float(self.cap, "cap", minimum=0.0, strict=True))

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        m, f_hat = _fraction_ema(self, state, bias_E, load_E)
        p = bias_E + self.u * (capacity_E / capacity_E.sum() - f_hat)
        p = (p - p.mean()).clip(-self.cap, self.cap)
        return RuleUpdate(p, state.advanced(velocity_E=m), None)


@dataclass(frozen=True)
class MirrorRule(UpdateRule):
    r"""Entropic mirror-descent step driven by an EMA of load fractions (phi-balancing style).

    .. math::

        m \leftarrow \beta m + (1 - \beta) \frac{A}{\sum_j A_j}, \quad
        \hat f = \frac{m}{1 - \beta^{n}}, \quad
        p \leftarrow p + u \log \frac{q}{\hat f + \delta}, \quad p \leftarrow p - \bar p,

    with target fractions :math:`q = c / \sum_j c_j` and a floor :math:`\delta` (a dead
    expert's step stays finite). The step is the gradient of
    :math:`\mathrm{KL}(q \,\|\, \hat f)` in the log (mirror) coordinates of the negative
    entropy, the strictly convex potential of the routing distribution; the bias plays the
    role of the log-weights. ``u`` is in score units per unit log-ratio. Deviation: the
    published rule's potential and constants are not known to us; this is the entropic
    member of that family.

    Parameters
    ----------
    u : float
        Step, score units per unit log-ratio (default ``1e-3``).
    beta : float
        EMA coefficient in [0, 1) (default 0.9).
    floor : float
        :math:`\delta` as a fraction of :math:`\min_k q_k` (default ``1e-3``).

    References
    ----------
    .. [phi] phi-balancing: mirror-descent expert load balancing (2026).
    .. [NY] A. Nemirovski, D. Yudin, Problem Complexity and Method Efficiency (1983).

    >>> import numpy as np
    >>> MirrorRule(u=1.0, beta=0.0).update(np.zeros(2), [3, 1], [2, 2]).bias_E.round(4).tolist()
    [-0.5486, 0.5486]
    """

    u: float = 1e-3
    beta: float = 0.9
    floor: float = 1e-3
    name: ClassVar[str] = "mirror"
    step_param: ClassVar[str | None] = "u"
    state_fields: ClassVar[tuple[str, ...]] = ("velocity_E",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "u", check_step(self.u, "u"))
        object.__setattr__(self, "beta", check_unit_interval(self.beta, "beta"))
        object.__setattr__(self, "floor", finite_float(self.floor, "floor", minimum=0.0, strict=True))

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        m, f_hat = _fraction_ema(self, state, bias_E, load_E)
        q = capacity_E / capacity_E.sum()
        delta = self.floor * float(q.min())
        if float(q.min()) <= 0:
            raise InvalidInputError("mirror needs positive capacities (a zero target has no log)")
        step = _log(q) - _log(f_hat + delta)
        p = bias_E + self.u * step
        return RuleUpdate(p - p.mean(), state.advanced(velocity_E=m), None)


def _log(x: Any) -> Any:
    """Natural log in the backend of ``x``."""
    return x.log() if backend(x).is_torch else np.log(x)
