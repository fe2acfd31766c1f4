"""Validators of scalar inputs at the public boundary, one home for each check.

Every function returns the value in its canonical type or raises
:class:`~alflb.errors.InvalidInputError` with one line that names the input, the rule
it breaks and the value given.

>>> positive_int(3, "n_steps")
3
>>> positive_int(0, "n_steps")
Traceback (most recent call last):
...
alflb.errors.InvalidInputError: n_steps must be an integer >= 1, got 0
>>> finite_float(0.5, "u", minimum=0.0)
0.5
>>> choice("gaussian", "stream", ("gaussian", "skewed"))
'gaussian'
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any

from .errors import InvalidInputError, UnknownNameError

__all__ = ["choice", "finite_float", "positive_int"]


def positive_int(value: Any, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``; bools and floats are refused.

    Any integer type (``int``, numpy integers) is accepted through ``__index__``.
    """
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and n > maximum:
        raise InvalidInputError(f"{name} must be an integer <= {maximum}, got {value!r}")
    return int(n)


def finite_float(value: Any, name: str, *, minimum: float | None = None,
                 maximum: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite ``float``, optionally bounded (``strict``: bounds excluded)."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(x):
        raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (x <= minimum if strict else x < minimum):
        rel = ">" if strict else ">="
        raise InvalidInputError(f"{name} must be {rel} {minimum:g}, got {value!r}")
    if maximum is not None and (x >= maximum if strict else x > maximum):
        rel = "<" if strict else "<="
        raise InvalidInputError(f"{name} must be {rel} {maximum:g}, got {value!r}")
    return x


def choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; else an error that lists them."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise UnknownNameError(f"unknown {name} {value!r}; choose one of: {', '.join(options)}")
    return value
