"""Checks and conversions shared by the rules (private).

Shape legend: ``E`` experts. Every check raises :class:`~alflb.errors.InvalidInputError`
naming the input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._array import backend, is_torch, to_numpy
from .._validate import positive_int
from ..errors import InvalidInputError
from ..schedules import ConstantSchedule, Schedule, check_step, schedule_from_dict


def check_n_experts(n_experts: Any) -> int:
    """``n_experts`` as an ``int >= 2`` (a bias needs two experts to balance)."""
    return positive_int(n_experts, "n_experts", minimum=2)


def check_flag(value: Any, name: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (numpy bools included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_bias_in(bias_E: Any) -> int:
    """Validate a bias handed to a rule (1-D, floating, finite) and return ``E``."""
    xp = backend(bias_E)
    b = xp.asarray(bias_E)
    if b.ndim != 1:
        raise InvalidInputError(f"bias_E must be 1-D (E,), got shape {tuple(b.shape)}")
    if xp.is_torch and not b.is_floating_point():
        raise InvalidInputError(f"bias_E must be a floating tensor, got {b.dtype}")
    if not xp.all_finite(b):
        raise InvalidInputError("bias_E contains NaN or inf")
    return int(b.shape[0])


def as_counts_like(x: Any, bias_E: Any, name: str, n_experts: int, allow_scalar: bool) -> Any:
    """Loads or capacities ``(E,)``, validated, in the bias's backend, dtype and device."""
    arr = to_numpy(x, dtype=None)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InvalidInputError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim == 0 and allow_scalar:
        arr = np.full(n_experts, float(arr))
    if arr.shape != (n_experts,):
        raise InvalidInputError(f"{name} must have shape (E,) = ({n_experts},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name} contains NaN or inf")
    if np.any(arr < 0):
        raise InvalidInputError(f"{name} must be non-negative token counts, got min {arr.min():g}")
    same_device = is_torch(x) and is_torch(bias_E) and x.device == bias_E.device
    return backend(bias_E).as_like(x.detach() if same_device else arr, bias_E)


def mean_load(capacity_E: Any) -> float:
    r""":math:`\bar L = \sum_k c_k / E`, refused when 0 (it normalises an error)."""
    mean = float(capacity_E.sum()) / capacity_E.shape[0]
    if mean <= 0:
        raise InvalidInputError("the mean capacity sum(c)/E is 0: cannot normalise the error")
    return mean


def check_unit_interval(value: Any, name: str) -> float:
    """A step-like number in ``[0, 1)`` (a momentum or EMA coefficient)."""
    x = check_step(value, name)
    if x >= 1:
        raise InvalidInputError(f"{name} must be in [0, 1), got {x}")
    return x


def schedule_or_constant(schedule: Any, value: float) -> Schedule:
    """``schedule`` as a :class:`~alflb.schedules.Schedule` (a dict is rebuilt; None: constant)."""
    if schedule is None:
        return ConstantSchedule(value)
    if isinstance(schedule, dict):
        schedule = schedule_from_dict(schedule)
    if not isinstance(schedule, Schedule):
        raise InvalidInputError(
            f"schedule must be a Schedule or None, got {type(schedule).__name__}"
        )
    return schedule


def infer_k(k: int | None, load_E: Any, n_tokens: int, n_experts: int) -> int:
    """``K``: ``k`` when given, else inferred from the loads as ``sum(A) / T``; ``1 <= K < E``.

    >>> infer_k(None, [3, 1], 2, 3), infer_k(1, [3, 1], 2, 3)
    (2, 1)
    """
    if k is None:
        total = float(to_numpy(load_E).sum())
        if total % n_tokens:
            raise InvalidInputError(
                f"cannot infer K: sum(load_E) = {total:g} is not a multiple of T = {n_tokens}; pass k"
            )
        k = int(total // n_tokens)
    k = int(k)
    if not 1 <= k <= n_experts - 1:
        raise InvalidInputError(f"K must satisfy 1 <= K <= E-1 = {n_experts - 1}, got {k}")
    return k
