"""The synthetic score streams: Gaussian, skewed, clustered, drifting, bursty, adversarial, fixed.

See :mod:`alflb.streams` for the mathematics; each class documents its mean ``mu``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .._validate import finite_float, positive_int
from ..errors import InvalidInputError
from .base import ScoreStream, activate

__all__ = ["AdversarialStream", "BurstyStream", "ClusteredStream", "DriftingStream", "FixedStream",
           "GaussianStream", "SkewedStream"]


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
        object.__setattr__(self, "zipf_s", finite_float(self.zipf_s, "zipf_s", minimum=0.0))
        object.__setattr__(self, "offset_scale", finite_float(self.offset_scale, "offset_scale", minimum=0.0))

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
        object.__setattr__(self, "n_topics", positive_int(self.n_topics, "n_topics"))
        object.__setattr__(self, "topic_scale", finite_float(self.topic_scale, "topic_scale", minimum=0.0))
        conc = finite_float(self.concentration, "concentration", minimum=0.0)
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
            self, "drift_amplitude", finite_float(self.drift_amplitude, "drift_amplitude", minimum=0.0)
        )
        period = finite_float(self.drift_period, "drift_period", minimum=0.0)
        if period <= 0:
            raise InvalidInputError(f"drift_period must be > 0, got {period}")
        object.__setattr__(self, "drift_period", period)
        object.__setattr__(self, "shift_every", positive_int(self.shift_every, "shift_every", 0))

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
        object.__setattr__(self, "burst_prob", finite_float(self.burst_prob, "burst_prob", minimum=0.0, maximum=1.0))
        object.__setattr__(self, "burst_len", positive_int(self.burst_len, "burst_len"))
        object.__setattr__(self, "burst_experts", positive_int(self.burst_experts, "burst_experts"))
        object.__setattr__(self, "burst_strength", finite_float(self.burst_strength, "burst_strength"))
        object.__setattr__(
            self, "burst_fraction", finite_float(self.burst_fraction, "burst_fraction", minimum=0.0, maximum=1.0)
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
        object.__setattr__(self, "strength", finite_float(self.strength, "strength"))
        object.__setattr__(self, "period", positive_int(self.period, "period"))

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

    The deterministic setting of docs/theory.md section 4 (T1-T3): the same ``gamma`` every iteration.
    """

    zipf_s: float = 0.0  # Zipf exponent of per-expert offsets (0: none)

    name: ClassVar[str] = "fixed"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "zipf_s", finite_float(self.zipf_s, "zipf_s", minimum=0.0))

    def _global_params(self, gen, n_tokens, n_experts):
        logits = gen.standard_normal((n_tokens, n_experts), dtype=np.float32) * np.float32(self.sigma)
        if self.zipf_s:
            logits += (-self.zipf_s * np.log(gen.permutation(n_experts) + 1)).astype(np.float32)
        return {"scores_TE": activate(logits, self.activation)}

    def _step(self, n, root, params, n_tokens, n_experts):
        return params["scores_TE"]


#: Every synthetic stream, for the registry.
SYNTHETIC_STREAMS = (GaussianStream, SkewedStream, ClusteredStream, DriftingStream, BurstyStream,
                     AdversarialStream, FixedStream)
