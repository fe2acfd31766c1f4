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
>>> import numpy as np
>>> s = make_stream("skewed", zipf_s=1.0)
>>> a = s.sample(4, 8, 6, rng=0)
>>> a.shape, a.dtype
((4, 8, 6), dtype('float32'))
>>> b = np.concatenate(list(s.iter_batches(4, 8, 6, rng=0, chunk_steps=3)))
>>> bool(np.array_equal(a, b))
True
"""

from .base import ScoreStream
from .registry import available_streams, make_stream, stream_from_dict
from .synthetic import (
    AdversarialStream,
    BurstyStream,
    ClusteredStream,
    DriftingStream,
    FixedStream,
    GaussianStream,
    SkewedStream,
)
from .trace import TraceStream

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
