r"""Score streams: seeded generators of router scores for the online simulator.

Shape legend: ``N`` steps (batches), ``T`` tokens per batch, ``E`` experts, ``L`` layers.

A stream is a frozen, keyword-only dataclass of parameters with one method,

    ``sample(n_steps, n_tokens, n_experts, rng) -> scores_NTE`` (float32),

plus :meth:`ScoreStream.iter_batches`, which yields the *same* numbers a chunk of steps at
a time (for runs too long to hold in memory). Every stream draws its scores as

.. math::

    \ell^n_{ik} = \mu^n_{ik} + \sigma z^n_{ik},\quad z \sim \mathcal N(0, 1),\qquad
    \gamma^n_{ik} = \phi(\ell^n_{ik})

with a stream-specific mean ``mu`` (popularity, topics, drift, bursts) and an activation
``phi``: ``"sigmoid"`` (DeepSeek-V3), ``"softmax"`` over experts, or ``"none"`` (raw
logits; the theory takes any real matrix).

Reproducibility. ``rng`` goes through :func:`numpy.random.default_rng` once; from it the
stream draws one root entropy, and then every random quantity comes from its own child
:class:`numpy.random.SeedSequence`: the stream's global parameters (offsets, topic
centres, phases) from ``spawn_key=(0,)``, step ``n``'s noise from ``(1, n)``, segment
``j``'s parameters (domain shifts, bursts) from ``(2, j)``. Step ``n`` therefore depends
only on the root and ``n``: ``sample`` and any chunking of ``iter_batches`` give identical
arrays, and two rules fed the same array see identical scores (common random numbers).

Streams (registry names for :func:`make_stream`):

=================  ==========================================================================
``gaussian``       i.i.d. ``N(0, sigma^2)`` logits.
``skewed``         fixed per-expert offsets: Zipf popularity (``offset_k = -s ln rank_k``,
                   ranks in random order) or Gaussian offsets.
``clustered``      a mixture of topics: each token draws a topic, its logits centre on that
                   topic's random expert profile (experts can specialise).
``drifting``       popularity that moves: sinusoidal drift of per-expert offsets and abrupt
                   domain shifts (the offsets are re-permuted every ``shift_every`` steps).
``bursty``         windows of ``burst_len`` steps; each window is, with probability
                   ``burst_prob``, a burst that boosts a random few experts for a fraction of
                   tokens.
``adversarial``    an oblivious square wave: one half of the experts is boosted for
                   ``period`` steps, then the other half (it punishes slow or oscillating
                   biases; it does not adapt to the bias).
``fixed``          one batch drawn once and repeated every step (the deterministic setting
                   of the convergence theorems).
``trace``          a recorded trace (:mod:`alflb.traces`), replayed step by step.
=================  ==========================================================================

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915 (the online setting: a fresh batch per step).
.. [W] L. Wang et al., arXiv:2408.15664.

Examples
--------
>>> s = make_stream("skewed", zipf_s=1.0)
>>> a = s.sample(4, 8, 6, rng=0)
>>> a.shape, a.dtype
((4, 8, 6), dtype('float32'))
>>> b = np.concatenate(list(s.iter_batches(4, 8, 6, rng=0, chunk_steps=3)))
>>> bool(np.array_equal(a, b))
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import InvalidInputError, UnknownNameError

__all__ = [
    "AdversarialStream",
    "BurstyStream",
    "ClusteredStream",
    "DriftingStream",
    "FixedStream",
    "GaussianStream",
    "ScoreStream",
    "SkewedStream",
    "TraceStream",
    "available_streams",
    "make_stream",
    "stream_from_dict",
]

_ACTIVATIONS = ("sigmoid", "softmax", "none")


def _check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_real(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise InvalidInputError(f"{name} must be finite and in [{lo}, {hi}], got {value!r}")
    return v


def _activate(logits: np.ndarray, activation: str) -> np.ndarray:
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
        object.__setattr__(self, "sigma", _check_real(self.sigma, "sigma", 0.0))
        if self.sigma <= 0:
            raise InvalidInputError(f"sigma must be > 0, got {self.sigma}")
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
        chunk_steps = _check_positive_int(chunk_steps, "chunk_steps")
        step_offset = _check_positive_int(step_offset, "step_offset", 0)
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
            _check_positive_int(n_steps, "n_steps"),
            _check_positive_int(n_tokens, "n_tokens"),
            _check_positive_int(n_experts, "n_experts", minimum=2),
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
        return _activate(logits, self.activation)


@dataclass(frozen=True, kw_only=True)
class GaussianStream(ScoreStream):
    """i.i.d. ``N(0, sigma^2)`` logits through the activation: every expert equally popular.

    >>> GaussianStream(activation="none").sample(2, 3, 4, rng=1).shape
    (2, 3, 4)
    """

    name: ClassVar[str] = "gaussian"


@dataclass(frozen=True, kw_only=True)
class SkewedStream(ScoreStream):
    r"""Fixed per-expert popularity offsets added to the logits.

    ``offsets="zipf"``: ``offset_k = -zipf_s * ln(rank_k)`` with ranks ``1..E`` in a random
    order, so an expert's chance to be on top falls like a power of its rank.
    ``offsets="gaussian"``: ``offset_k ~ N(0, offset_scale^2)``.
    """

    offsets: str = "zipf"  # "zipf" | "gaussian"
    zipf_s: float = 0.5  # Zipf exponent (offsets="zipf")
    offset_scale: float = 0.5  # std of the offsets (offsets="gaussian")

    name: ClassVar[str] = "skewed"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.offsets not in ("zipf", "gaussian"):
            raise InvalidInputError(f"offsets must be 'zipf' or 'gaussian', got {self.offsets!r}")
        object.__setattr__(self, "zipf_s", _check_real(self.zipf_s, "zipf_s", 0.0))
        object.__setattr__(self, "offset_scale", _check_real(self.offset_scale, "offset_scale", 0.0))

    def _offsets(self, gen: np.random.Generator, n_experts: int) -> np.ndarray:
        if self.offsets == "zipf":
            ranks = gen.permutation(n_experts) + 1
            return -self.zipf_s * np.log(ranks)
        return self.offset_scale * gen.standard_normal(n_experts)

    def _global_params(self, gen, n_tokens, n_experts):
        return {"offset_E": self._offsets(gen, n_experts)}

    def _mean(self, n, root, params, gen, n_tokens, n_experts):
        return params["offset_E"]


@dataclass(frozen=True, kw_only=True)
class ClusteredStream(ScoreStream):
    r"""A mixture of topics: token ``i`` draws topic ``z_i``; its logit mean is ``centre[z_i]``.

    ``centre[j] ~ N(0, topic_scale^2 I_E)`` and topic weights ``~ Dirichlet(concentration)``
    are drawn once per stream, so each topic prefers its own few experts (specialisation)
    while the mixture keeps the marginal popularity uneven.
    """

    n_topics: int = 8  # number of topics
    topic_scale: float = 1.5  # std of each topic's expert profile
    concentration: float = 1.0  # Dirichlet concentration of the topic weights

    name: ClassVar[str] = "clustered"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "n_topics", _check_positive_int(self.n_topics, "n_topics"))
        object.__setattr__(self, "topic_scale", _check_real(self.topic_scale, "topic_scale", 0.0))
        conc = _check_real(self.concentration, "concentration", 0.0)
        if conc <= 0:
            raise InvalidInputError(f"concentration must be > 0, got {conc}")
        object.__setattr__(self, "concentration", conc)

    def _global_params(self, gen, n_tokens, n_experts):
        centre = self.topic_scale * gen.standard_normal((self.n_topics, n_experts))
        weights = gen.dirichlet(np.full(self.n_topics, self.concentration))
        return {"centre_JE": centre.astype(np.float32), "weight_J": weights}

    def _mean(self, n, root, params, gen, n_tokens, n_experts):
        topic_T = gen.choice(self.n_topics, size=n_tokens, p=params["weight_J"])
        return params["centre_JE"][topic_T]


@dataclass(frozen=True, kw_only=True)
class DriftingStream(SkewedStream):
    r"""Popularity that moves: drifting offsets plus abrupt domain shifts.

    .. math::

        \mu^n_k = o_{\pi_j(k)} + a \sin(2\pi n / P + \phi_k), \qquad j = \lfloor n / S \rfloor

    with base offsets ``o`` (as in :class:`SkewedStream`), a random phase ``phi_k`` per
    expert, amplitude ``a = drift_amplitude``, period ``P = drift_period`` steps, and a fresh
    random permutation ``pi_j`` of the offsets in every segment of ``S = shift_every`` steps
    (``shift_every=0``: no shifts; segment 0 keeps the identity).
    """

    drift_amplitude: float = 0.5  # amplitude of the sinusoidal drift of each offset
    drift_period: float = 500.0  # period of the drift, in steps
    shift_every: int = 0  # steps between abrupt domain shifts (0: none)

    name: ClassVar[str] = "drifting"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(
            self, "drift_amplitude", _check_real(self.drift_amplitude, "drift_amplitude", 0.0)
        )
        period = _check_real(self.drift_period, "drift_period", 0.0)
        if period <= 0:
            raise InvalidInputError(f"drift_period must be > 0, got {period}")
        object.__setattr__(self, "drift_period", period)
        object.__setattr__(self, "shift_every", _check_positive_int(self.shift_every, "shift_every", 0))

    def _global_params(self, gen, n_tokens, n_experts):
        return {
            "offset_E": self._offsets(gen, n_experts),
            "phase_E": gen.uniform(0.0, 2 * np.pi, n_experts),
            "segments": {},
        }

    def _mean(self, n, root, params, gen, n_tokens, n_experts):
        offset = params["offset_E"]
        if self.shift_every:
            seg = n // self.shift_every
            if seg > 0:
                cache = params["segments"]
                if seg not in cache:
                    cache.clear()  # segments are visited in order: keep one
                    cache[seg] = self._child(root, 2, seg).permutation(n_experts)
                offset = offset[cache[seg]]
        drift = self.drift_amplitude * np.sin(2 * np.pi * n / self.drift_period + params["phase_E"])
        return offset + drift


@dataclass(frozen=True, kw_only=True)
class BurstyStream(ScoreStream):
    r"""Bursts: in a burst window, ``burst_experts`` random experts get ``+burst_strength``
    on a random ``burst_fraction`` of the tokens.

    Time is cut into windows of ``burst_len`` steps; each window is a burst with
    probability ``burst_prob`` (drawn per window, so the pattern is a function of ``n``).
    """

    burst_prob: float = 0.2  # probability that a window is a burst
    burst_len: int = 20  # steps per window
    burst_experts: int = 2  # experts boosted in a burst
    burst_strength: float = 2.0  # logit boost of the boosted experts
    burst_fraction: float = 0.5  # fraction of tokens that feel the boost

    name: ClassVar[str] = "bursty"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "burst_prob", _check_real(self.burst_prob, "burst_prob", 0.0, 1.0))
        object.__setattr__(self, "burst_len", _check_positive_int(self.burst_len, "burst_len"))
        object.__setattr__(self, "burst_experts", _check_positive_int(self.burst_experts, "burst_experts"))
        object.__setattr__(self, "burst_strength", _check_real(self.burst_strength, "burst_strength"))
        object.__setattr__(
            self, "burst_fraction", _check_real(self.burst_fraction, "burst_fraction", 0.0, 1.0)
        )

    def _global_params(self, gen, n_tokens, n_experts):
        if self.burst_experts >= n_experts:
            raise InvalidInputError(
                f"burst_experts must be < E = {n_experts}, got {self.burst_experts}"
            )
        return {"windows": {}}

    def _mean(self, n, root, params, gen, n_tokens, n_experts):
        window = n // self.burst_len
        cache = params["windows"]
        if window not in cache:
            cache.clear()
            wgen = self._child(root, 2, window)
            is_burst = wgen.random() < self.burst_prob
            experts = wgen.choice(n_experts, size=self.burst_experts, replace=False)
            cache[window] = experts if is_burst else None
        experts = cache[window]
        if experts is None:
            return None
        hit_T = gen.random(n_tokens) < self.burst_fraction
        mean = np.zeros((n_tokens, n_experts), dtype=np.float32)
        mean[np.ix_(hit_T, experts)] = self.burst_strength
        return mean


@dataclass(frozen=True, kw_only=True)
class AdversarialStream(ScoreStream):
    r"""An oblivious square wave: experts ``0..E/2-1`` get ``+strength`` for ``period``
    steps, then experts ``E/2..E-1`` do, and so on (which half goes first is random).

    It is fixed in advance (it does not react to the bias), the standard adversary of
    online learning; a rule whose bias lags by about ``period`` steps pays for every flip.
    """

    strength: float = 1.0  # logit boost of the favoured half
    period: int = 50  # steps between flips

    name: ClassVar[str] = "adversarial"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "strength", _check_real(self.strength, "strength"))
        object.__setattr__(self, "period", _check_positive_int(self.period, "period"))

    def _global_params(self, gen, n_tokens, n_experts):
        first = int(gen.integers(2))
        half = np.zeros(n_experts)
        half[: n_experts // 2] = 1.0
        return {"half_E": half if first == 0 else 1.0 - half}

    def _mean(self, n, root, params, gen, n_tokens, n_experts):
        half = params["half_E"]
        favoured = half if (n // self.period) % 2 == 0 else 1.0 - half
        return self.strength * favoured


@dataclass(frozen=True, kw_only=True)
class FixedStream(ScoreStream):
    """One batch drawn once (i.i.d. logits plus optional Zipf offsets) and repeated each step.

    The deterministic setting of SPEC section 4 (T1-T3): the same ``gamma`` every iteration.
    """

    zipf_s: float = 0.0  # Zipf exponent of per-expert offsets (0: none)

    name: ClassVar[str] = "fixed"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "zipf_s", _check_real(self.zipf_s, "zipf_s", 0.0))

    def _global_params(self, gen, n_tokens, n_experts):
        logits = gen.standard_normal((n_tokens, n_experts), dtype=np.float32) * np.float32(self.sigma)
        if self.zipf_s:
            logits += (-self.zipf_s * np.log(gen.permutation(n_experts) + 1)).astype(np.float32)
        return {"scores_TE": _activate(logits, self.activation)}

    def _step(self, n, root, params, n_tokens, n_experts):
        return params["scores_TE"]


@dataclass(frozen=True, kw_only=True)
class TraceStream(ScoreStream):
    """Replay a recorded trace (:mod:`alflb.traces`): step ``n`` is the trace's step ``n`` of ``layer``.

    ``n_tokens`` and ``n_experts`` must match the trace; ``n_steps`` may exceed its length
    only with ``wrap=True`` (the trace repeats). ``rng`` is ignored: a trace is data.
    ``sigma`` and ``activation`` are unused (the trace holds final scores).
    """

    path: str = ""  # the .npz trace file
    layer: int = 0  # which MoE layer to replay
    wrap: bool = False  # repeat the trace when n_steps exceeds its length

    name: ClassVar[str] = "trace"

    def __post_init__(self) -> None:
        if not self.path:
            raise InvalidInputError("the trace stream needs path=<file.npz>")
        object.__setattr__(self, "path", str(Path(self.path)))
        object.__setattr__(self, "layer", _check_positive_int(self.layer, "layer", 0))
        object.__setattr__(self, "wrap", bool(self.wrap))

    def _global_params(self, gen, n_tokens, n_experts):
        from .traces import load_trace

        trace = load_trace(self.path)
        _n_steps_tr, n_layers, t, e = trace.scores_NLTE.shape
        if self.layer >= n_layers:
            raise InvalidInputError(f"layer {self.layer} out of range: the trace has {n_layers} layers")
        if (t, e) != (n_tokens, n_experts):
            raise InvalidInputError(
                f"the trace has T={t} tokens and E={e} experts per step; asked for "
                f"T={n_tokens}, E={n_experts}"
            )
        return {"scores_NTE": trace.scores_NLTE[:, self.layer]}

    def iter_batches(self, n_steps, n_tokens, n_experts, rng=None, *, chunk_steps=1, step_offset=0):
        if step_offset:
            raise InvalidInputError("a trace has no independent continuation: step_offset must be 0")
        n_steps, n_tokens, n_experts = self._check_dims(n_steps, n_tokens, n_experts)
        chunk_steps = _check_positive_int(chunk_steps, "chunk_steps")
        scores = self._global_params(None, n_tokens, n_experts)["scores_NTE"]
        if n_steps > len(scores) and not self.wrap:
            raise InvalidInputError(
                f"the trace has {len(scores)} steps, asked for {n_steps}; pass wrap=True to repeat it"
            )
        for start in range(0, n_steps, chunk_steps):
            idx = np.arange(start, min(start + chunk_steps, n_steps)) % len(scores)
            yield np.ascontiguousarray(scores[idx], dtype=np.float32)


_STREAMS: dict[str, type[ScoreStream]] = {
    cls.name: cls
    for cls in (
        GaussianStream,
        SkewedStream,
        ClusteredStream,
        DriftingStream,
        BurstyStream,
        AdversarialStream,
        FixedStream,
        TraceStream,
    )
}


def available_streams() -> list[str]:
    """The registered stream names.

    >>> available_streams()
    ['adversarial', 'bursty', 'clustered', 'drifting', 'fixed', 'gaussian', 'skewed', 'trace']
    """
    return sorted(_STREAMS)


def make_stream(name: str, **params: Any) -> ScoreStream:
    """Build a stream by registry name; unknown names raise :class:`UnknownNameError`.

    >>> make_stream("clustered", n_topics=4)
    ClusteredStream(sigma=1.0, activation='sigmoid', n_topics=4, topic_scale=1.5, concentration=1.0)
    """
    if not isinstance(name, str) or name.lower() not in _STREAMS:
        raise UnknownNameError(
            f"unknown score stream {name!r}; available: {', '.join(available_streams())}"
        )
    cls = _STREAMS[name.lower()]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = [p for p in params if p not in allowed]
    if unknown:
        raise InvalidInputError(
            f"stream {name!r} has no parameter {unknown[0]!r}; its parameters are: {', '.join(allowed)}"
        )
    return cls(**params)


def stream_from_dict(d: dict[str, Any]) -> ScoreStream:
    """Inverse of :meth:`ScoreStream.as_dict`."""
    if not isinstance(d, dict) or "name" not in d:
        raise InvalidInputError(f"a stream dict needs a 'name' key, got {d!r}")
    params = dict(d)
    return make_stream(params.pop("name"), **params)
