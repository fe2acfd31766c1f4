"""Private helpers shared by the numpy and torch code paths."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidInputError


def is_torch(x: Any) -> bool:
    """True when ``x`` is a ``torch.Tensor`` (without importing torch when it is absent)."""
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


def to_numpy(x: Any, dtype=np.float64) -> np.ndarray:
    """Convert a numpy array, torch tensor or sequence to a numpy array of ``dtype``."""
    if is_torch(x):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and other non-arrays
        raise InvalidInputError(f"cannot convert input of type {type(x).__name__} to an array: {exc}") from exc
    if np.iscomplexobj(arr):
        raise InvalidInputError("complex values are not supported: scores and biases must be real")
    if arr.dtype == object:
        raise InvalidInputError("input is not a numeric array (dtype=object)")
    if dtype is None:
        return arr
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InvalidInputError(f"input must be numeric, got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def check_scores(scores_TE: Any, name: str = "scores_TE") -> None:
    """Raise :class:`InvalidInputError` unless ``scores_TE`` is a finite, non-empty 2-D real array."""
    if is_torch(scores_TE):
        if scores_TE.is_complex():
            raise InvalidInputError(f"{name} is complex: scores must be real")
        shape = tuple(scores_TE.shape)
        finite = bool(scores_TE.isfinite().all()) if scores_TE.is_floating_point() else True
    else:
        arr = to_numpy(scores_TE, dtype=None)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise InvalidInputError(f"{name} must be numeric, got dtype {arr.dtype}")
        shape = arr.shape
        finite = bool(np.isfinite(arr).all()) if arr.size else True
    if len(shape) != 2:
        raise InvalidInputError(f"{name} must be 2-D (tokens T, experts E), got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise InvalidInputError(f"{name} is empty: shape {shape}")
    if not finite:
        raise InvalidInputError(f"{name} contains NaN or inf")


def check_k(k: Any, n_experts: int) -> int:
    """Validate the top-K parameter: an integer in ``1..E-1``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidInputError(f"k must be an integer, got {k!r}")
    k = int(k)
    if not 1 <= k <= n_experts - 1:
        raise InvalidInputError(f"k must satisfy 1 <= k <= E-1 = {n_experts - 1}, got k={k}")
    return k


def check_bias(bias_E: Any, n_experts: int, name: str = "bias_E") -> None:
    """Validate a bias vector: 1-D, length ``E``, finite."""
    if is_torch(bias_E):
        shape = tuple(bias_E.shape)
        finite = bool(bias_E.isfinite().all())
    else:
        arr = to_numpy(bias_E)
        shape = arr.shape
        finite = bool(np.isfinite(arr).all())
    if shape != (n_experts,):
        raise InvalidInputError(f"{name} must have shape (E,) = ({n_experts},), got {shape}")
    if not finite:
        raise InvalidInputError(f"{name} contains NaN or inf")
