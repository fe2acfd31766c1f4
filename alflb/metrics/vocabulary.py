r"""One vocabulary of load-imbalance metrics, with the names other frameworks use.

Shape legend: ``E`` experts, ``R`` expert-parallel ranks, ``N`` steps (batches),
``L`` MoE layers, ``C`` computation batches (micro-batch x data-parallel group) per step.

Axis convention. Every function reduces over the *last* axis, the axis of the units
being balanced (experts, or ranks after :func:`alflb.ep.rank_load`), and keeps every
leading axis. So ``(E,) -> scalar``, ``(N, E) -> (N,)`` (per batch) and
``(L, N, E) -> (L, N)`` (per layer and batch). The scope helpers choose what a load
vector is: :func:`global_load` sums the step axis first (``MaxVio_global``),
:func:`per_layer_mean` averages a per-layer result over layers, the way [W] reports it.

With :math:`A_k \ge 0` the loads, :math:`\bar A` their mean over the last axis and
:math:`E` its length:

.. math::

    \mathrm{MaxVio} = \frac{\max_k A_k - \bar A}{\bar A}, \quad
    \mathrm{OF} = \frac{\max_k A_k}{\bar A} = 1 + \mathrm{MaxVio}, \quad
    \mathrm{balancedness} = \frac{\bar A}{\max_k A_k} = \frac1{\mathrm{OF}}

.. math::

    \mathrm{CV} = \frac{\operatorname{std}_k A_k}{\bar A}, \quad
    \mathrm{Gini} = \frac{\sum_{j,k} |A_j - A_k|}{2 E^2 \bar A}, \quad
    \frac{e^{H}}{E},\ H = -\sum_k q_k \ln q_k,\ q_k = \frac{A_k}{\sum_j A_j}

``docs/metrics.md`` holds the mapping table (which framework calls which of these
what) and a worked example. Every ratio is defined as its balanced value when the
total load is 0 (an empty batch is not imbalanced).

References
----------
.. [W] L. Wang et al., Auxiliary-Loss-Free Load Balancing Strategy for
   Mixture-of-Experts, arXiv:2408.15664, section 4.1 (MaxVio).
.. [V3] DeepSeek-AI, DeepSeek-V3 Technical Report, arXiv:2412.19437.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._array import to_numpy
from .._validate import finite_float
from ..errors import InvalidInputError
from .core import _loads, _ratio, _scalar, dropped_fraction, load_entropy, max_violation

__all__ = [
    "METRICS",
    "balancedness",
    "dropped_rate",
    "effective_fraction",
    "gini",
    "global_load",
    "imbalance_ratio",
    "maxvio_batch",
    "maxvio_computation_batch",
    "maxvio_global",
    "overload_factor",
    "per_layer_mean",
]










def imbalance_ratio(load_E: Any) -> np.ndarray | float:
    r"""TensorRT-LLM's imbalance ratio :math:`(\max - \bar A)/\bar A`: MaxVio by another name.

    >>> imbalance_ratio([3, 1])
    0.5
    """
    return max_violation(load_E)


def overload_factor(load_R: Any) -> np.ndarray | float:
    r"""Overload factor :math:`\max_r L_r / \bar L` (Megatron-core); 1 when balanced.

    Usually applied to rank loads ``load_R`` (:func:`alflb.ep.rank_load`); applied to
    expert loads it equals ``1 + MaxVio``.

    >>> overload_factor([6, 2, 2, 2])
    2.0
    """
    a = _loads(load_R)
    return _scalar(_ratio(a.max(axis=-1), a.mean(axis=-1), 1.0))


def balancedness(load_R: Any) -> np.ndarray | float:
    r"""vLLM's balancedness :math:`\bar L / \max_r L_r` in (0, 1]; 1 when balanced.

    >>> balancedness([6, 2, 2, 2])
    0.5
    """
    a = _loads(load_R)
    return _scalar(_ratio(a.mean(axis=-1), a.max(axis=-1), 1.0))








def gini(load_E: Any) -> np.ndarray | float:
    r"""Gini coefficient :math:`\sum_{j,k}|A_j - A_k| / (2E^2\bar A)`, in ``[0, 1 - 1/E]``.

    Computed from the sorted loads, :math:`\frac{2\sum_i i A_{(i)}}{E \sum_k A_k} -
    \frac{E+1}{E}` with ``i = 1..E``.

    >>> gini([1, 1, 1, 1]), gini([4, 0, 0, 0])
    (0.0, 0.75)
    """
    a = np.sort(_loads(load_E), axis=-1)
    e = a.shape[-1]
    i = np.arange(1, e + 1, dtype=np.float64)
    total = a.sum(axis=-1)
    g = _ratio(2.0 * (a * i).sum(axis=-1), e * total, (e + 1) / e) - (e + 1) / e
    return _scalar(np.maximum(g, 0.0))


def effective_fraction(load_E: Any) -> np.ndarray | float:
    r"""Normalised entropy :math:`e^{H}/E`: the effective number of busy experts over E.

    ``H`` is the Shannon entropy (nats) of the load shares. 1 when balanced, ``1/E``
    when one expert takes every token. (:func:`alflb.metrics.load_entropy` returns
    :math:`H/\ln E` instead; the two are monotone in each other.)

    >>> effective_fraction([2, 2, 0, 0])
    0.5
    """
    a = _loads(load_E)
    h = np.asarray(load_entropy(a, normalized=False))
    total = a.sum(axis=-1)
    return _scalar(np.where(total > 0, np.exp(h) / a.shape[-1], 1.0))


def dropped_rate(load_E: Any, capacity_factor: float) -> np.ndarray | float:
    r"""Fraction of routed slots dropped when each expert keeps at most ``C`` tokens.

    .. math:: C = \lceil f \, \textstyle\sum_k A_k / E \rceil, \qquad
              \text{drop} = \sum_k \max(A_k - C, 0) / \sum_k A_k

    ``f`` is the capacity factor (GShard, Switch, Megatron's ``moe_expert_capacity_factor``).

    >>> dropped_rate([6, 2, 2, 2], 1.0)
    0.25
    """
    f = finite_float(capacity_factor, "capacity_factor", minimum=0.0, strict=True)
    a = _loads(load_E)
    cap = np.ceil(f * a.sum(axis=-1, keepdims=True) / a.shape[-1] - 1e-9)
    return dropped_fraction(a, np.broadcast_to(cap, a.shape))


def global_load(load_NE: Any, step_axis: int = -2) -> np.ndarray:
    """Loads summed over steps: ``(N, E) -> (E,)``, ``(L, N, E) -> (L, E)``.

    >>> global_load([[1, 0], [0, 1]]).tolist()
    [1.0, 1.0]
    """
    a = _loads(load_NE)
    if a.ndim < 2:
        raise InvalidInputError(f"global_load needs a step axis: shape (N, E) or (L, N, E), got {a.shape}")
    return a.sum(axis=step_axis)


def maxvio_batch(load_NE: Any) -> np.ndarray:
    """``MaxVio_batch`` [W]: MaxVio of each step's loads, ``(N, E) -> (N,)``, ``(L, N, E) -> (L, N)``.

    >>> maxvio_batch([[2, 0], [1, 1]]).tolist()
    [1.0, 0.0]
    """
    a = _loads(load_NE)
    if a.ndim < 2:
        raise InvalidInputError(f"maxvio_batch needs (N, E) or (L, N, E) loads, got shape {a.shape}")
    return np.asarray(max_violation(a))


def maxvio_global(load_NE: Any) -> np.ndarray | float:
    """``MaxVio_global`` [W]: MaxVio of the loads summed over all steps; one per layer.

    >>> maxvio_global([[2, 0], [0, 2]])
    0.0
    """
    return max_violation(global_load(load_NE))


def maxvio_computation_batch(load_NCE: Any) -> np.ndarray:
    """``MaxVio_computation_batch``: MaxVio of each computation batch, averaged per step.

    ``load_NCE[n, c]`` holds the loads of computation batch ``c`` (one micro-batch x
    data-parallel group) of step ``n``; the result has shape ``(N,)`` (``(L, N)`` for
    ``(L, N, C, E)``).

    >>> maxvio_computation_batch([[[2, 0], [0, 2]]]).tolist()
    [1.0]
    """
    a = _loads(load_NCE)
    if a.ndim < 3:
        raise InvalidInputError(f"maxvio_computation_batch needs (N, C, E) loads, got shape {a.shape}")
    return np.asarray(max_violation(a)).mean(axis=-1)


def per_layer_mean(values_LN: Any) -> np.ndarray | float:
    """Average a per-layer metric over the layer axis (the first): how [W] reports MaxVio.

    >>> per_layer_mean([[0.0, 1.0], [1.0, 1.0]]).tolist()
    [0.5, 1.0]
    """
    v = to_numpy(values_LN, dtype=np.float64)
    if v.ndim == 0:
        raise InvalidInputError("per_layer_mean needs a layer axis")
    return _scalar(v.mean(axis=0))


# name -> (formula, names in other frameworks, balanced value, worst value over E units)
METRICS: dict[str, tuple[str, str, str, str]] = {
    "max_violation": ("(max - mean) / mean", "MaxVio (Wang et al.); imbalance ratio (TensorRT-LLM)",
                      "0", "E - 1"),
    "imbalance_ratio": ("(max - mean) / mean", "TensorRT-LLM imbalance ratio; = MaxVio", "0", "E - 1"),
    "overload_factor": ("max / mean", "overload factor (Megatron-core); = 1 + MaxVio", "1", "E"),
    "balancedness": ("mean / max", "balancedness (vLLM EPLB); = 1 / overload factor", "1", "1/E"),
    "coefficient_of_variation": ("std / mean", "CV; relative standard deviation", "0",
                                 "sqrt(E - 1)"),
    "gini": ("sum |A_j - A_k| / (2 E^2 mean)", "Gini coefficient", "0", "1 - 1/E"),
    "effective_fraction": ("exp(H) / E", "normalised perplexity; effective experts / E", "1", "1/E"),
    "dead_experts": ("#{k: A_k = 0}", "idle, dead or unused experts", "0", "E - 1"),
    "min_over_mean": ("min / mean", "min/mean load", "1", "0"),
    "dropped_rate": ("sum max(A_k - C, 0) / sum A_k, C = ceil(f sum A / E)",
                     "token drop rate (GShard, Switch, Megatron capacity factor)", "0",
                     "1 - f/E (f <= 1)"),
}


