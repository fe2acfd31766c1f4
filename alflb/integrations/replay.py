r"""Replay group-limited top-K routing (DeepSeek-V3 "noaux_tc") on recorded scores.

Shape legend: ``N`` steps, ``L`` layers, ``T`` tokens, ``E`` experts, ``K`` top-k,
``G`` groups.

Sign convention: the router adds the bias ``b`` to the scores for selection only; an
overloaded expert's bias goes down. With ``G`` groups of ``E / G`` experts, keep
``topk_group`` groups ranked by the sum of their two largest biased scores, mask the
others with :math:`-\infty` (never 0: docs/theory.md section 8), and select the top ``K`` of what
remains:

.. math::

    s_{ig} = \sum_{\text{top-2 } k \in g} (\gamma_{ik} + b_k), \qquad
    \text{select}_i = \operatorname{TopK}_k\bigl(\gamma_{ik} + b_k
        \text{ if } g(k) \in \operatorname{Top}_{\text{topk\_group}}(s_{i\cdot})
        \text{ else } -\infty\bigr).

>>> import numpy as np
>>> scores = np.array([[0.9, 0.1, 0.8, 0.7]], np.float32)     # groups {0,1}, {2,3}
>>> replay_group_limited(scores, np.zeros(4), k=2, n_group=2, topk_group=1).tolist()
[[2, 3]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._groups import group_limited_topk
from ..errors import InvalidInputError
from ..traces import Trace

__all__ = ["replay_group_limited", "replay_trace"]


def replay_group_limited(scores_TE: Any, bias_E: Any, k: int, n_group: int = 1,
                         topk_group: int = 1) -> np.ndarray:
    """Selected experts ``(T, K)`` (sorted ascending per token) of group-limited routing.

    Parameters
    ----------
    scores_TE : array_like, shape (T, E)
        Unbiased router scores ``gamma``.
    bias_E : array_like, shape (E,)
        The selection bias (router adds it).
    k, n_group, topk_group : int
        Experts per token, groups, groups kept; ``n_group == 1`` is plain top-K.
    """
    scores = np.asarray(scores_TE, dtype=np.float32)
    bias = np.asarray(bias_E, dtype=np.float32)
    if scores.ndim != 2 or bias.shape != (scores.shape[1],):
        raise InvalidInputError(f"need scores_TE (T, E) and bias_E (E,), got {scores.shape} and {bias.shape}")
    e = scores.shape[1]
    if n_group < 1 or e % n_group or not 1 <= topk_group <= n_group:
        raise InvalidInputError(f"E = {e} experts cannot form n_group = {n_group} groups keeping {topk_group}")
    if not 1 <= k <= e:
        raise InvalidInputError(f"k must be in [1, {e}], got {k}")
    biased_TE = scores + bias  # fp32, as the routers compute it
    topk_TK = group_limited_topk(biased_TE, k, n_group, topk_group)
    return np.sort(topk_TK, axis=-1)


def replay_trace(trace: Trace, layer: int = 0, bias_E: Any = None) -> np.ndarray:
    """Replay a trace's layer with its recorded routing semantics: ``topk_NTK``.

    Uses the metadata written by :func:`alflb.integrations.transformers.record_routing`
    (``k``, ``n_group``, ``topk_group``, ``bias_at_record_LE``); ``bias_E`` overrides
    the recorded bias: shape ``(E,)``, or ``(N, E)`` for a bias that moved during the
    recording (the ``bias_NLE`` beside the trace, at this layer).
    """
    meta = trace.metadata
    for key in ("k", "n_group", "topk_group"):
        if key not in meta:
            raise InvalidInputError(f"the trace's metadata has no {key!r}: it does not carry routing semantics")
    if bias_E is None:
        recorded = meta.get("bias_at_record_LE")
        if recorded is None or recorded[layer] is None:
            raise InvalidInputError("the trace records no bias; pass bias_E")
        bias_E = recorded[layer]
    scores_NTE = trace.scores_NLTE[:, layer]
    bias_NE = np.asarray(bias_E, dtype=np.float32)
    if bias_NE.ndim == 1:
        bias_NE = np.broadcast_to(bias_NE, (scores_NTE.shape[0], bias_NE.shape[0]))
    if bias_NE.shape != scores_NTE.shape[::2]:
        raise InvalidInputError(f"bias_E must have shape (E,) or (N, E) = {scores_NTE.shape[::2]}, "
                                f"got {np.shape(bias_E)}")
    return np.stack([replay_group_limited(s, b, meta["k"], meta["n_group"], meta["topk_group"])
                     for s, b in zip(scores_NTE, bias_NE)])
