r"""Proportional rules: the dual step with a step size, ``per_expert``, ``uniform``, ``decay``.

Shape legend: ``E`` experts. Sign convention: the router adds the bias; an overloaded
expert's bias goes down. Each rule is

.. math:: p \leftarrow p + \varepsilon^n \odot (c - A), \qquad \varepsilon^n \ge 0,

with :math:`A` the loads of the batch routed with :math:`p` and :math:`c` the capacities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .._array import to_numpy
from ..errors import InvalidInputError
from ..schedules import DecaySchedule, Schedule, check_step
from ._checks import as_counts_like, check_flag, mean_load, schedule_or_constant
from .base import RuleState, RuleUpdate, UpdateRule

__all__ = ["DecayRule", "PerExpertRule", "UniformRule"]


@dataclass(frozen=True)
class PerExpertRule(UpdateRule):
    r"""General per-expert constant steps, on raw token counts.

    .. math:: p_k \leftarrow p_k + \varepsilon_k (c_k - A_k)

    Parameters
    ----------
    eps_E : sequence of float, shape (E,)
        The steps :math:`\varepsilon_k \ge 0`.

    >>> PerExpertRule(eps_E=(0.1, 0.2)).update(np.zeros(2), [3, 1], [2, 2]).bias_E.tolist()
    [-0.1, 0.2]
    """

    eps_E: tuple[float, ...] = ()
    name: ClassVar[str] = "per_expert"
    step_param: ClassVar[str | None] = "eps_E"

    def __post_init__(self) -> None:
        arr = to_numpy(self.eps_E, dtype=None)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
            raise InvalidInputError(
                f"eps_E must be a non-empty 1-D sequence of steps, got {self.eps_E!r}"
            )
        eps = tuple(check_step(v, f"eps_E[{k}]") for k, v in enumerate(arr.tolist()))
        object.__setattr__(self, "eps_E", eps)

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        if len(self.eps_E) != bias_E.shape[0]:
            raise InvalidInputError(
                f"eps_E has {len(self.eps_E)} entries but bias_E has E = {bias_E.shape[0]}"
            )
        eps = as_counts_like(np.asarray(self.eps_E), bias_E, "eps_E", bias_E.shape[0], False)
        return RuleUpdate(bias_E + eps * (capacity_E - load_E), state.advanced(), eps)


class _ScalarStepRule(UpdateRule):
    r"""One scalar step :math:`\varepsilon_n` for every expert, on the normalised error.

    .. math:: p \leftarrow p + \frac{\varepsilon_n}{\bar L} (c - A), \qquad
              \bar L = \tfrac1E \textstyle\sum_k c_k \;(1 \text{ when not } \texttt{normalize})

    Subclasses give ``rate(n)`` and a ``normalize`` field.
    """

    normalize: bool

    def rate(self, n: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _update(self, bias_E, load_E, capacity_E, state: RuleState, scores_TE) -> RuleUpdate:
        eps = self.rate(state.n_updates)
        if self.normalize:
            eps = eps / mean_load(capacity_E)
        step = eps + 0.0 * load_E
        return RuleUpdate(bias_E + eps * (capacity_E - load_E), state.advanced(), step)


@dataclass(frozen=True)
class UniformRule(_ScalarStepRule):
    r"""Uniform (proportional) steps [W] Table 3. Alias ``proportional``.

    .. math:: p \leftarrow p + \varepsilon_n \frac{c - A}{\bar L}, \qquad
              \bar L = \tfrac1E \textstyle\sum_k c_k

    With ``normalize`` (default) the error is a fraction of the mean load, so ``eps`` is
    dimensionless and ``eps`` (default ``1e-3``) is in score units per unit relative error,
    comparable with the sign rule's ``u``; ``step_E`` is then
    :math:`\varepsilon_n / \bar L`. With ``normalize=False`` the error is in raw token
    counts. :math:`\varepsilon_n` comes from ``schedule`` if given, else the constant ``eps``.

    >>> UniformRule(eps=0.5).update(np.zeros(2), [3, 1], [2, 2]).bias_E.tolist()
    [-0.25, 0.25]
    """

    eps: float = 1e-3
    normalize: bool = True
    schedule: Schedule | None = None
    name: ClassVar[str] = "uniform"
    step_param: ClassVar[str | None] = "eps"

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", check_step(self.eps, "eps"))
        check_flag(self.normalize, "normalize")
        if self.schedule is not None:
            object.__setattr__(self, "schedule", schedule_or_constant(self.schedule, self.eps))

    def rate(self, n: int) -> float:
        """The step ``eps_n`` of update ``n`` (before normalisation).

        >>> UniformRule(eps=0.2).rate(3)
        0.2
        """
        return self.eps if self.schedule is None else self.schedule(n)


@dataclass(frozen=True)
class DecayRule(_ScalarStepRule):
    r"""Decaying uniform steps, ``n`` = updates so far.

    .. math:: \varepsilon_n = \frac{a}{n + n_0}, \qquad
              p \leftarrow p + \varepsilon_n \frac{c - A}{\bar L}

    with :math:`\bar L = \sum_k c_k / E` when ``normalize`` (default), 1 otherwise. With
    ``a = 1/mu``, ``n0 = 1`` and ``normalize=False`` this is the ``1/(mu n)`` schedule
    (``n`` counted from 1) of the logarithmic-regret theorem ([HZ] with [HAK]) for an
    expected loss that is ``mu``-strongly convex on ``sum p = 0``. Units: ``a`` (default 1)
    is in score units per unit relative error (``normalize``) or per token of error (not);
    :func:`alflb.advise.auto_decay` sets ``a = 1/mu`` from a measured ``mu``.

    References
    ----------
    .. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915.
    .. [HAK] E. Hazan, A. Agarwal, S. Kale, Machine Learning 69 (2007).

    >>> r = DecayRule(a=1.0, n0=1.0, normalize=False)
    >>> [float(r.update(np.zeros(2), [2, 0], [1, 1], RuleState(n)).step_E[0]) for n in range(3)]
    [1.0, 0.5, 0.3333333333333333]
    """

    a: float = 1.0
    n0: float = 1.0
    normalize: bool = True
    name: ClassVar[str] = "decay"
    step_param: ClassVar[str | None] = "a"

    def __post_init__(self) -> None:
        sched = DecaySchedule(a=self.a, n0=self.n0)
        object.__setattr__(self, "a", sched.a)
        object.__setattr__(self, "n0", sched.n0)
        check_flag(self.normalize, "normalize")

    def rate(self, n: int) -> float:
        """The step ``eps_n = a / (n + n0)`` of update ``n`` (before normalisation).

        >>> DecayRule(a=2.0, n0=1.0).rate(3)
        0.5
        """
        return self.a / (n + self.n0)
