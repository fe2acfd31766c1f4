"""The base of every score stream: seeded children, the activation, chunked sampling.

See :mod:`alflb.streams` for the mathematics and the reproducibility contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._validate import finite_float, positive_int
from ..errors import InvalidInputError

__all__ = ["ScoreStream"]

_ACTIVATIONS = ("sigmoid", "softmax", "none")


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Apply the activation in place on float32 logits of shape (..., E)."""
    if activation == "sigmoid":
        np.negative(logits, out=logits)
        np.exp(logits, out=logits)
        logits += 1.0
        np.reciprocal(logits, out=logits)
    elif activation == "softmax":
        logits -= logits.max(axis=-1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=-1, keepdims=True)
    return logits


@dataclass(frozen=True, kw_only=True)
class ScoreStream:
    """Base class: Gaussian logits around a stream-specific mean, then an activation.

    Parameters
    ----------
    sigma : float
        Standard deviation of the logit noise (> 0).
    activation : {"sigmoid", "softmax", "none"}
        Map from logits to scores (``"none"`` keeps raw logits).
    """

    sigma: float = 1.0  # std of the per-token logit noise
    activation: str = "sigmoid"  # "sigmoid" | "softmax" | "none"

    name: ClassVar[str] = "base"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", finite_float(self.sigma, "sigma", minimum=0.0, strict=True))
        if self.activation not in _ACTIVATIONS:
            raise InvalidInputError(
                f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}"
            )

    # ------------------------------------------------------------------ public
    def sample(
        self, n_steps: int, n_tokens: int, n_experts: int, rng: Any = None, *, step_offset: int = 0
    ) -> np.ndarray:
        """Draw the whole stream at once: ``scores_NTE``, float32, shape ``(N, T, E)``.

        ``step_offset`` draws steps ``offset .. offset+N-1`` of the same stream (same global
        parameters, independent noise): a far offset gives a fresh sample of the same
        distribution for a stationary stream (used to estimate ``p*``).
        """
        n_steps, n_tokens, n_experts = self._check_dims(n_steps, n_tokens, n_experts)
        out = np.empty((n_steps, n_tokens, n_experts), dtype=np.float32)
        start = 0
        for chunk in self.iter_batches(
            n_steps, n_tokens, n_experts, rng, chunk_steps=64, step_offset=step_offset
        ):
            out[start : start + len(chunk)] = chunk
            start += len(chunk)
        return out

    def iter_batches(
        self,
        n_steps: int,
        n_tokens: int,
        n_experts: int,
        rng: Any = None,
        *,
        chunk_steps: int = 1,
        step_offset: int = 0,
    ) -> Iterator[np.ndarray]:
        """Yield the stream ``chunk_steps`` steps at a time, each ``(<=chunk_steps, T, E)``.

        The concatenation equals :meth:`sample` with the same ``rng`` and ``step_offset``.
        """
        n_steps, n_tokens, n_experts = self._check_dims(n_steps, n_tokens, n_experts)
        chunk_steps = positive_int(chunk_steps, "chunk_steps")
        step_offset = positive_int(step_offset, "step_offset", 0)
        root = self._root(rng)
        params = self._global_params(self._child(root, 0), n_tokens, n_experts)
        for start in range(0, n_steps, chunk_steps):
            stop = min(start + chunk_steps, n_steps)
            chunk = np.empty((stop - start, n_tokens, n_experts), dtype=np.float32)
            with np.errstate(over="ignore", invalid="ignore"):  # refused just below
                for n in range(start, stop):
                    chunk[n - start] = self._step(n + step_offset, root, params, n_tokens, n_experts)
            if not np.isfinite(chunk).all():
                raise InvalidInputError(
                    f"stream {self.name!r}: its parameters give non-finite float32 scores "
                    f"(steps {start + step_offset}..{stop + step_offset - 1}); use smaller scales"
                )
            yield chunk

    def as_dict(self) -> dict[str, Any]:
        """``{"name": ..., **parameters}`` in plain JSON types (inverse: :func:`stream_from_dict`)."""
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _check_dims(n_steps: Any, n_tokens: Any, n_experts: Any) -> tuple[int, int, int]:
        return (
            positive_int(n_steps, "n_steps"),
            positive_int(n_tokens, "n_tokens"),
            positive_int(n_experts, "n_experts", 2),
        )

    @staticmethod
    def _root(rng: Any) -> np.ndarray:
        gen = np.random.default_rng(rng)
        return gen.integers(0, 2**63 - 1, size=2, dtype=np.int64)

    @staticmethod
    def _child(root: np.ndarray, *key: int) -> np.random.Generator:
        return np.random.default_rng(
            np.random.SeedSequence([int(r) for r in root], spawn_key=tuple(int(k) for k in key))
        )

    def _global_params(self, gen: np.random.Generator, n_tokens: int, n_experts: int) -> dict:
        return {}

    def _mean(
        self, n: int, root: np.ndarray, params: dict, gen: np.random.Generator, n_tokens: int, n_experts: int
    ) -> np.ndarray | None:
        """The logit mean of step ``n``: ``(E,)``, ``(T, E)`` or ``None`` for zero."""
        return None

    def _step(self, n: int, root: np.ndarray, params: dict, n_tokens: int, n_experts: int) -> np.ndarray:
        gen = self._child(root, 1, n)
        logits = gen.standard_normal((n_tokens, n_experts), dtype=np.float32)
        if self.sigma != 1.0:
            logits *= np.float32(self.sigma)
        mean = self._mean(n, root, params, gen, n_tokens, n_experts)
        if mean is not None:
            logits += mean.astype(np.float32, copy=False)
        return activate(logits, self.activation)

