r"""Step-size schedules for the ALF-LB update rules.

A schedule maps the update count ``n`` (0 for the first update, 1 for the second, ...)
to a non-negative step size:

.. math::

    \text{constant:}\; u_n = u, \qquad
    \text{decay:}\; u_n = \frac{a}{n + n_0}, \qquad
    \text{piecewise:}\; u_n = v_j \;\text{for}\; b_{j-1} \le n < b_j .

``DecaySchedule(a=1/mu, n0=1)`` is the ``1/(mu n)`` schedule (with the count starting
at 1) that gives logarithmic regret for a ``mu``-strongly convex expected loss
([HAK], [HZ]). ``PiecewiseSchedule((u, 0.0), (freeze_after,))`` is DeepSeek-V3's frozen
tail: ``u`` for the first ``freeze_after`` updates, then 0 ([V3]).

Schedules are frozen dataclasses of plain numbers: they can be written to JSON
(:meth:`Schedule.as_dict` / :func:`schedule_from_dict`) beside every result.

References
----------
.. [HAK] E. Hazan, A. Agarwal, S. Kale, Logarithmic regret algorithms for online convex
   optimization, Machine Learning 69 (2007).
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915.
.. [V3] DeepSeek-AI, DeepSeek-V3 Technical Report, arXiv:2412.19437, section 2.1.2.

Examples
--------
>>> DecaySchedule(a=2.0, n0=1)(0), DecaySchedule(a=2.0, n0=1)(3)
(2.0, 0.5)
>>> PiecewiseSchedule(values=(1e-3, 0.0), boundaries=(2,)).steps(4)
[0.001, 0.001, 0.0, 0.0]
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from .errors import InvalidInputError, UnknownNameError

__all__ = [
    "ConstantSchedule",
    "DecaySchedule",
    "PiecewiseSchedule",
    "Schedule",
    "schedule_from_dict",
]


def check_step(value: Any, name: str) -> float:
    r"""A finite, non-negative real step size :math:`u \in [0, \infty)`.

    Raises :class:`~alflb.errors.InvalidInputError` naming ``name`` otherwise.

    >>> check_step(1, "u")
    1.0
    """
    if isinstance(value, bool) or (
        not isinstance(value, (int, float)) and not hasattr(value, "__float__")
    ):
        raise InvalidInputError(f"{name} must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a real number, got {value!r}") from exc
    if math.isnan(v):
        raise InvalidInputError(f"{name} must not be NaN")
    if not math.isfinite(v):
        raise InvalidInputError(f"{name} must be finite, got {v}")
    if v < 0:
        raise InvalidInputError(f"{name} must be non-negative (a step size), got {v}")
    return v


def _check_count(n: Any) -> int:
    if isinstance(n, bool) or (not isinstance(n, int) and not hasattr(n, "__index__")):
        raise InvalidInputError(f"the update count n must be an integer, got {n!r}")
    n = int(n)
    if n < 0:
        raise InvalidInputError(f"the update count n must be >= 0, got {n}")
    return n


@dataclass(frozen=True)
class Schedule:
    r"""Base class: a map :math:`n \mapsto u_n \ge 0` from the update count to a step size.

    ``schedule(n)`` is the step of update ``n`` (0 for the first update).

    >>> isinstance(ConstantSchedule(0.1), Schedule)
    True
    """

    kind: ClassVar[str] = "base"

    def __call__(self, n: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def steps(self, n_updates: int) -> list[float]:
        r"""The first ``n_updates`` step sizes :math:`u_0, \dots, u_{n-1}`, as a list.

        >>> DecaySchedule(a=1.0).steps(3)
        [1.0, 0.5, 0.3333333333333333]
        """
        return [self(n) for n in range(n_updates)]

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form, with the ``kind`` tag; inverse of :func:`schedule_from_dict`.

        >>> PiecewiseSchedule(values=(0.1, 0.0), boundaries=(5,)).as_dict()
        {'kind': 'piecewise', 'values': [0.1, 0.0], 'boundaries': [5]}
        """
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return {"kind": self.kind, **d}


@dataclass(frozen=True)
class ConstantSchedule(Schedule):
    r"""A constant step.

    .. math:: u_n = u \quad \forall n

    >>> ConstantSchedule(0.01)(100)
    0.01
    """

    value: float = 1e-3
    kind: ClassVar[str] = "constant"

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", check_step(self.value, "value"))

    def __call__(self, n: int) -> float:
        _check_count(n)
        return self.value


@dataclass(frozen=True)
class DecaySchedule(Schedule):
    r"""A harmonically decaying step.

    .. math:: u_n = \frac{a}{n + n_0}, \qquad a \ge 0,\; n_0 > 0

    With ``a = 1/mu`` and ``n0 = 1`` it is :math:`1/(\mu (n+1))`, the step of the
    logarithmic-regret theorem ([HAK], [HZ]).

    >>> DecaySchedule(a=2.0, n0=1)(3)
    0.5
    """

    a: float = 1.0
    n0: float = 1.0
    kind: ClassVar[str] = "decay"

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", check_step(self.a, "a"))
        n0 = check_step(self.n0, "n0")
        if n0 <= 0:
            raise InvalidInputError(f"n0 must be > 0 (the first step is a/n0), got {n0}")
        object.__setattr__(self, "n0", n0)

    def __call__(self, n: int) -> float:
        return self.a / (_check_count(n) + self.n0)


@dataclass(frozen=True)
class PiecewiseSchedule(Schedule):
    r"""A piecewise-constant step (DeepSeek-V3's frozen tail is ``((u, 0.0), (n_f,))``).

    .. math:: u_n = v_j \quad\text{for}\quad b_{j-1} \le n < b_j
              \qquad (b_{-1} = 0,\; b_{J} = \infty)

    ``len(values) == len(boundaries) + 1``; boundaries strictly increasing; the last value
    holds from the last boundary on.

    >>> PiecewiseSchedule(values=(1e-3, 0.0), boundaries=(2,)).steps(4)
    [0.001, 0.001, 0.0, 0.0]
    """

    values: tuple[float, ...] = (1e-3,)
    boundaries: tuple[int, ...] = ()
    kind: ClassVar[str] = "piecewise"

    def __post_init__(self) -> None:
        values = tuple(check_step(v, f"values[{j}]") for j, v in enumerate(self.values))
        bounds = tuple(_check_count(b) for b in self.boundaries)
        if len(values) != len(bounds) + 1:
            raise InvalidInputError(
                f"a piecewise schedule needs len(values) == len(boundaries) + 1, got "
                f"{len(values)} values and {len(bounds)} boundaries"
            )
        if any(b1 >= b2 for b1, b2 in itertools.pairwise(bounds)):
            raise InvalidInputError(f"boundaries must be strictly increasing, got {list(bounds)}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "boundaries", bounds)

    def __call__(self, n: int) -> float:
        n = _check_count(n)
        for value, bound in zip(self.values, self.boundaries):
            if n < bound:
                return value
        return self.values[-1]


_SCHEDULES: dict[str, type[Schedule]] = {
    cls.kind: cls for cls in (ConstantSchedule, DecaySchedule, PiecewiseSchedule)
}


def schedule_from_dict(d: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.as_dict`.

    >>> schedule_from_dict(DecaySchedule(a=3.0).as_dict())
    DecaySchedule(a=3.0, n0=1.0)
    """
    if not isinstance(d, dict) or "kind" not in d:
        raise InvalidInputError(f"a schedule dict needs a 'kind' key, got {d!r}")
    params = dict(d)
    kind = params.pop("kind")
    if kind not in _SCHEDULES:
        raise UnknownNameError(f"unknown schedule kind {kind!r}; available: {sorted(_SCHEDULES)}")
    cls = _SCHEDULES[kind]
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    except TypeError as exc:
        raise InvalidInputError(f"bad parameters for schedule {kind!r}: {exc}") from exc
