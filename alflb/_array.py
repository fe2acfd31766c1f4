"""Private helpers shared by the numpy and torch code paths.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

:func:`backend` picks the array namespace of an input once (``xp = backend(bias_E)``);
the rules and the router are then written once against ``xp``. Validators
(:func:`check_scores`, :func:`check_k`, :func:`check_bias`) raise
:class:`~alflb.errors.InvalidInputError` naming the input.
"""

from __future__ import annotations

import functools
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
    xp = backend(bias_E)
    b = xp.asarray(bias_E)
    shape = tuple(b.shape)
    if shape != (n_experts,):
        raise InvalidInputError(f"{name} must have shape (E,) = ({n_experts},), got {shape}")
    if not xp.all_finite(b):
        raise InvalidInputError(f"{name} contains NaN or inf")


# --------------------------------------------------------------------------- array backend
class NumpyBackend:
    """The numpy side of :func:`backend`: float64 vectors, selection by ``np.partition``.

    Every method takes and returns numpy arrays; the torch twin has the same methods with
    the same results (bit for bit on the same values), so the rules and the router are
    written once against ``xp = backend(x)``.

    >>> xp = backend(np.array([1.0, -2.0]))
    >>> xp.name, xp.sign(np.array([1.0, -2.0])).tolist(), xp.full(2, 1.0).tolist()
    ('numpy', [1.0, -1.0], [1.0, 1.0])
    """

    name = "numpy"
    is_torch = False
    sign = staticmethod(np.sign)
    tanh = staticmethod(np.tanh)
    abs = staticmethod(np.abs)

    @staticmethod
    def asarray(x: Any) -> np.ndarray:
        """``x`` as float64 numpy (a torch backend returns a tensor unchanged)."""
        return to_numpy(x)

    @staticmethod
    def floating(x: Any) -> np.ndarray:
        """``x`` as an array of a floating dtype (float64 unless already floating)."""
        x = np.asarray(x)
        return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)

    @staticmethod
    def full(n: int, value: float, like: Any = None) -> np.ndarray:
        """A float64 vector of ``n`` entries equal to ``value``."""
        return np.full(n, value, dtype=np.float64)

    @staticmethod
    def copy(x: Any) -> np.ndarray:
        """A float64 copy of ``x``."""
        return np.array(x, dtype=np.float64, copy=True)

    @staticmethod
    def as_like(x: Any, like: np.ndarray, bias: bool = False) -> np.ndarray:
        """``x`` converted to the dtype of ``like`` (``bias=True``: float64)."""
        return to_numpy(x, dtype=np.float64 if bias else like.dtype)

    @staticmethod
    def promote(scores_TE: Any, bias_E: Any) -> tuple[np.ndarray, np.ndarray]:
        """Scores and bias as float64 numpy, ready to combine."""
        return to_numpy(scores_TE), to_numpy(bias_E)

    @staticmethod
    def all_finite(x: Any) -> bool:
        """Whether every entry of ``x`` is finite."""
        return bool(np.isfinite(x).all())

    @staticmethod
    def divide_where(num: float, den: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``num / den`` where ``mask``, 0 elsewhere (no division where ``mask`` is false)."""
        return np.divide(num, den, out=np.zeros_like(den), where=mask)

    @staticmethod
    def kth_largest(values_TE: np.ndarray, *ranks: int) -> list[np.ndarray]:
        """For each 0-based ``rank`` ``j``, the ``(j+1)``-th largest entry of every row, ``(T,)``."""
        part_TE = -np.partition(-np.asarray(values_TE, dtype=np.float64), ranks, axis=1)
        return [part_TE[:, j] for j in ranks]

    @staticmethod
    def topk_values(values_TE: Any, k: int) -> np.ndarray:
        """The ``k`` largest entries of every row (in no particular order), ``(T, k)``."""
        v = np.asarray(values_TE, dtype=np.float64)
        return -np.partition(-v, k - 1, axis=1)[:, :k]

    @staticmethod
    def cumcount(mask_TE: np.ndarray) -> np.ndarray:
        """Running count of true entries along each row (int64)."""
        return np.cumsum(mask_TE, axis=1)

    @staticmethod
    def count(mask_TE: Any, axis: int) -> np.ndarray:
        """Number of true (or the sum of integer) entries along ``axis``, int64."""
        return np.asarray(mask_TE).sum(axis=axis, dtype=np.int64)

    @staticmethod
    def true_columns(mask_TE: Any) -> tuple[np.ndarray, int]:
        """The column index of every true entry in row-major order, and the row length."""
        mask = np.asarray(mask_TE, dtype=bool)
        return np.nonzero(mask)[1], int(mask[0].sum())


class TorchBackend:
    """The torch side of :func:`backend` (same methods as :class:`NumpyBackend`).

    Results live on the device of the input; a bias is fp32 or fp64, never half precision
    (docs/theory.md section 8).
    """

    name = "torch"
    is_torch = True

    def __init__(self) -> None:
        import torch  # only reached with a tensor in hand, so torch is already loaded

        self.torch = torch
        self.sign, self.tanh, self.abs = torch.sign, torch.tanh, torch.abs

    def bias_dtype(self, like: Any):
        """``like``'s dtype when it is fp32/fp64, else fp32."""
        t = self.torch
        return like.dtype if like.dtype in (t.float32, t.float64) else t.float32

    @staticmethod
    def asarray(x: Any) -> Any:
        return x

    def floating(self, x: Any) -> Any:
        return x if x.is_floating_point() else x.to(self.torch.float64)

    def full(self, n: int, value: float, like: Any) -> Any:
        return self.torch.full((n,), value, dtype=self.bias_dtype(like), device=like.device)

    @staticmethod
    def copy(x: Any) -> Any:
        return x.clone()

    def as_like(self, x: Any, like: Any, bias: bool = False) -> Any:
        dtype = self.bias_dtype(like) if bias else like.dtype
        if is_torch(x):
            return x.to(device=like.device, dtype=dtype)
        return self.torch.as_tensor(to_numpy(x), dtype=dtype, device=like.device)

    def promote(self, scores_TE: Any, bias_E: Any) -> tuple[Any, Any]:
        t = self.torch
        b = bias_E if is_torch(bias_E) else t.as_tensor(to_numpy(bias_E))
        b = b.to(device=scores_TE.device, dtype=t.promote_types(scores_TE.dtype, b.dtype))
        return scores_TE.to(b.dtype), b

    @staticmethod
    def all_finite(x: Any) -> bool:
        return bool(x.isfinite().all())

    def divide_where(self, num: float, den: Any, mask: Any) -> Any:
        t = self.torch
        return t.where(mask, num / t.where(mask, den, t.ones_like(den)), 0.0)

    def kth_largest(self, values_TE: Any, *ranks: int) -> list[Any]:
        top_TR = self.torch.topk(values_TE, max(ranks) + 1, dim=1, sorted=True).values
        return [top_TR[:, j] for j in ranks]

    def topk_values(self, values_TE: Any, k: int) -> Any:
        return self.torch.topk(values_TE, k, dim=1).values

    def cumcount(self, mask_TE: Any) -> Any:
        return self.torch.cumsum(mask_TE.to(self.torch.int64), dim=1)

    def count(self, mask_TE: Any, axis: int) -> Any:
        return mask_TE.to(self.torch.int64).sum(dim=axis)

    def true_columns(self, mask_TE: Any) -> tuple[Any, int]:
        return self.torch.nonzero(mask_TE, as_tuple=False)[:, 1], int(mask_TE[0].sum())


NUMPY = NumpyBackend()


@functools.cache
def _torch_backend() -> TorchBackend:
    return TorchBackend()


def backend(x: Any) -> NumpyBackend | TorchBackend:
    """The array namespace for ``x``: :class:`TorchBackend` for a tensor, else numpy.

    Dispatch happens once per call site (``xp = backend(bias_E)``); the code after it is
    written once. Importing this module never imports torch.

    >>> backend([1.0, 2.0]).name
    'numpy'
    """
    return _torch_backend() if is_torch(x) else NUMPY
