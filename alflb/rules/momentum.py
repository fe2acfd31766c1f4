r"""The momentum rule: a normalised, momentum, soft-clamped and centred update (SMEBU-like).

Shape legend: ``E`` experts. Sign convention: the router adds the bias; an overloaded
expert's bias goes down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .._array import backend
from ..errors import InvalidInputError
from ..schedules import check_step
from ._checks import check_flag, check_unit_interval, mean_load
from .base import RuleUpdate, UpdateRule

__all__ = ["MomentumRule"]


@dataclass(frozen=True)
class MomentumRule(UpdateRule):
    r"""Normalised, momentum, soft-clamped, centred update (SMEBU-like).

    .. math::

        e = \frac{c - A}{\bar L},\quad v \leftarrow \beta v + (1-\beta) e,\quad
        \Delta = u \tanh(v / \tau),\quad p \leftarrow p + \Delta - \mathrm{mean}(\Delta)
        \;(\text{if } \texttt{center}),

    with :math:`\bar L = \sum_k c_k / E`. The constants of the published variant are not
    known (docs/theory.md section 3): ``u``, ``beta``, ``tau`` are parameters. :math:`|\Delta_k| < u`;
    for :math:`\tau \to 0` and :math:`\beta = 0` it tends to the centred sign rule. Not a
    dual step of the form :math:`\varepsilon (c - A)` with :math:`\varepsilon \ge 0`
    (momentum), so ``step_E`` is ``None``. The state keeps ``velocity_E`` (:math:`v`).

    Parameters
    ----------
    u : float
        Largest move per update, :math:`u \ge 0`, in score units (default ``1e-3``).
    beta : float
        Momentum :math:`\beta \in [0, 1)`.
    tau : float
        Soft-clamp temperature :math:`\tau > 0`.
    center : bool
        Subtract the mean of :math:`\Delta`.

    >>> import numpy as np
    >>> out = MomentumRule(u=1.0, beta=0.0, tau=1.0, center=False).update(np.zeros(2), [2, 0], [1, 1])
    >>> out.bias_E.round(6).tolist()
    [-0.761594, 0.761594]
    """

    u: float = 1e-3
    beta: float = 0.9
    tau: float = 0.1
    center: bool = True
    name: ClassVar[str] = "momentum"
    step_param: ClassVar[str | None] = "u"
    state_fields: ClassVar[tuple[str, ...]] = ("velocity_E",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "u", check_step(self.u, "u"))
        object.__setattr__(self, "beta", check_unit_interval(self.beta, "beta"))
        tau = check_step(self.tau, "tau")
        if tau <= 0:
            raise InvalidInputError(f"tau must be > 0, got {tau}")
        object.__setattr__(self, "tau", tau)
        check_flag(self.center, "center")

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        xp = backend(bias_E)
        v_old = state.velocity_E
        if v_old is None:
            v_old = 0.0 * bias_E
        else:
            v_old = xp.as_like(v_old, bias_E)
            if tuple(v_old.shape) != tuple(bias_E.shape):
                raise InvalidInputError(
                    f"state.velocity_E must have shape {tuple(bias_E.shape)}, got {tuple(v_old.shape)}"
                )
        err = (capacity_E - load_E) / mean_load(capacity_E)
        v = self.beta * v_old + (1.0 - self.beta) * err
        delta = self.u * xp.tanh(v / self.tau)
        if self.center:
            delta = delta - delta.mean()
        return RuleUpdate(bias_E + delta, state.advanced(velocity_E=v), None)
