r"""Node-limited top-K routing (DeepSeek-V3): each token reaches experts on at most M nodes.

Shape legend: ``T`` tokens, ``E`` experts, ``G`` nodes.

With biased scores :math:`\gamma_{ik} + p_k` and ``node_of_expert_E`` mapping experts to
nodes, token ``i`` ranks the nodes by

.. math:: \sigma_{ig} = \sum \operatorname{Top}_{\lceil K/M \rceil}\{\gamma_{ik} + p_k : k \text{ on } g\},

keeps the ``M`` best (ties: lowest node index), sets the biased scores of every expert
on another node to :math:`-\infty` (never 0: biases may be negative) and routes top-K on
what is left. With ``M`` equal to the number of nodes it is plain top-K routing.
DeepSeek-V3 uses K = 8, M = 4 and the top-2 sum per node (its ``topk_group`` over
expert groups is the same computation with groups in place of nodes).

Sign convention: the router adds the bias, ``gamma + p``; an overloaded expert's bias
goes down. The bias only selects; gate weights use the unbiased scores.

References
----------
.. [V3] DeepSeek-AI, DeepSeek-V3 Technical Report, arXiv:2412.19437, section 2.1.2
   (node-limited routing) and 3.2.2 (M = 4).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._array import is_torch, to_numpy
from .._validate import positive_int
from ..errors import InvalidInputError
from ..routing import biased_scores

__all__ = ["node_limited_scores", "node_limited_topk", "nodes_per_token"]


def _nodes(node_of_expert_E: Any, n_experts: int) -> np.ndarray:
    nodes = to_numpy(node_of_expert_E, dtype=None)
    if nodes.shape != (n_experts,) or not np.issubdtype(nodes.dtype, np.integer) or nodes.min() < 0:
        raise InvalidInputError(
            f"node_of_expert_E must be {n_experts} non-negative integers, got {nodes.dtype} {nodes.shape}"
        )
    return nodes.astype(np.int64)


def node_limited_scores(scores_TE: Any, bias_E: Any, node_of_expert_E: Any, k: int,
                        max_nodes: int) -> np.ndarray:
    r"""Biased scores with the experts on each token's dropped nodes set to ``-inf``.

    Parameters
    ----------
    scores_TE : array (T, E)
        Router scores ``gamma``.
    bias_E : array (E,) or None
        The expert bias ``p`` (added for selection).
    node_of_expert_E : int array (E,)
        Node of each expert (for a placement, :attr:`Placement.node_of_expert_E`).
    k, max_nodes : int
        Experts per token ``K`` and nodes per token ``M``.

    Numpy in, numpy out (float64); a torch tensor in, a tensor out on its device.

    >>> s = np.array([[0.9, 0.8, 0.1, 0.7]])
    >>> node_limited_scores(s, None, [0, 0, 1, 1], k=2, max_nodes=1).tolist()
    [[0.9, 0.8, -inf, -inf]]
    """
    if is_torch(scores_TE):
        return _node_limited_scores_torch(scores_TE, bias_E, node_of_expert_E, k, max_nodes)
    values = np.array(biased_scores(np.asarray(scores_TE), None if bias_E is None else np.asarray(bias_E)),
                      dtype=np.float64)
    t, nodes, k, m, n_nodes, per = _plan(values, node_of_expert_E, k, max_nodes)
    if m >= n_nodes:
        return values
    sizes = np.bincount(nodes, minlength=n_nodes)
    node_score_TG = np.full((t, n_nodes), -np.inf)
    for g in range(n_nodes):
        cols = np.flatnonzero(nodes == g)
        if cols.size == 0:
            continue
        top = -np.sort(-values[:, cols], axis=1)[:, : min(per, cols.size)]
        node_score_TG[:, g] = top.sum(axis=1)
    order = np.argsort(-node_score_TG, axis=1, kind="stable")[:, :m]
    if np.any(sizes[order].sum(axis=1) < k):
        raise InvalidInputError(f"max_nodes={m} nodes hold fewer than k={k} experts for some token")
    keep_TG = np.zeros((t, n_nodes), dtype=bool)
    np.put_along_axis(keep_TG, order, True, axis=1)
    return np.where(keep_TG[:, nodes], values, -np.inf)


def _plan(values, node_of_expert_E, k, max_nodes):
    """Validated sizes: ``(T, node of each expert, K, M, nodes, experts counted per node)``."""
    t, e = values.shape
    nodes = _nodes(node_of_expert_E, e)
    k = positive_int(k, "k", maximum=e - 1)
    m = positive_int(max_nodes, "max_nodes")
    return t, nodes, k, m, int(nodes.max()) + 1, max(1, math.ceil(k / m))


def _node_limited_scores_torch(scores_TE, bias_E, node_of_expert_E, k, max_nodes):
    import torch

    values = biased_scores(scores_TE, bias_E)  # (T, E), the input's device
    t, nodes, k, m, n_nodes, per = _plan(values, node_of_expert_E, k, max_nodes)
    if m >= n_nodes:
        return values
    node_score_TG = values.new_full((t, n_nodes), float("-inf"))
    for g in range(n_nodes):
        cols = torch.as_tensor(np.flatnonzero(nodes == g), device=values.device)
        if cols.numel():
            node_score_TG[:, g] = values[:, cols].topk(min(per, cols.numel()), dim=1).values.sum(dim=1)
    order = torch.sort(node_score_TG, dim=1, descending=True, stable=True).indices[:, :m]  # (T, M)
    sizes = torch.as_tensor(np.bincount(nodes, minlength=n_nodes), device=values.device)
    if bool((sizes[order].sum(dim=1) < k).any()):
        raise InvalidInputError(f"max_nodes={m} nodes hold fewer than k={k} experts for some token")
    keep_TG = torch.zeros((t, n_nodes), dtype=torch.bool, device=values.device)
    keep_TG.scatter_(1, order, True)
    nodes_t = torch.as_tensor(nodes, device=values.device)
    return values.masked_fill(~keep_TG[:, nodes_t], float("-inf"))


def node_limited_topk(scores_TE: Any, bias_E: Any, node_of_expert_E: Any, k: int,
                      max_nodes: int) -> np.ndarray:
    """Top-K routing restricted to ``max_nodes`` nodes per token; bool ``(T, E)``, K per row (numpy or torch).

    Ties go to the lowest expert index, as in :func:`alflb.routing.route_topk`.

    >>> s = np.array([[0.9, 0.8, 0.1, 0.85]])
    >>> node_limited_topk(s, None, [0, 0, 1, 1], k=2, max_nodes=1).astype(int).tolist()
    [[1, 1, 0, 0]]
    """
    masked = node_limited_scores(scores_TE, bias_E, node_of_expert_E, k, max_nodes)
    if is_torch(masked):
        import torch

        idx = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]
        return torch.zeros_like(masked, dtype=torch.bool).scatter_(1, idx, True)
    idx = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    out = np.zeros(masked.shape, dtype=bool)
    np.put_along_axis(out, idx, True, axis=1)
    return out


def nodes_per_token(assignment_TE: Any, node_of_expert_E: Any) -> np.ndarray:
    """Distinct nodes each token is sent to, shape ``(T,)``.

    >>> nodes_per_token([[1, 0, 1, 0]], [0, 0, 1, 1]).tolist()
    [2]
    """
    x = to_numpy(assignment_TE, dtype=bool)
    nodes = _nodes(node_of_expert_E, x.shape[1])
    hit_TG = np.zeros((x.shape[0], int(nodes.max()) + 1), dtype=bool)
    for g in range(hit_TG.shape[1]):
        hit_TG[:, g] = x[:, nodes == g].any(axis=1)
    return hit_TG.sum(axis=1)
