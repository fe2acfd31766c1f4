r"""Top-K routing with a bias: the primal best response.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

Sign convention (used everywhere in alflb): the router *adds* the bias to the scores
for selection, ``gamma + p``; an overloaded expert's bias goes *down*.

.. math::

    x_{i\cdot}(p) = \operatorname{TopK}_k(\gamma_{ik} + p_k), \qquad
    A_k(p) = \sum_i x_{ik}(p).

Tie-break: among experts whose biased scores tie at the K-th place, the lowest expert
indices are chosen. The rule is deterministic, identical for numpy and torch, and
independent of the order in which a sort happens to visit the row.

All functions take numpy arrays or torch tensors and return the same kind (numpy in,
numpy out; torch in, torch out, on the input's device).

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915, section 2 (top-K routing is the best
   response to the dual variables).
.. [W] L. Wang et al., Auxiliary-Loss-Free Load Balancing Strategy for
   Mixture-of-Experts, arXiv:2408.15664.
"""

from __future__ import annotations

from typing import Any

from ._array import backend, check_bias, check_k, check_scores

__all__ = [
    "biased_scores",
    "expert_load",
    "route_topk",
    "routing_margin",
    "topk_indices",
    "topk_sum",
]


def biased_scores(scores_TE: Any, bias_E: Any = None) -> Any:
    r"""The scores top-K selection sees, :math:`\gamma_{ik} + p_k`, shape ``(T, E)``.

    .. math:: v_{ik} = \gamma_{ik} + p_k

    Parameters
    ----------
    scores_TE : array_like or torch.Tensor, shape (T, E)
        Router scores :math:`\gamma`; finite. Integer and bool scores become float64 (top-K
        negates and subtracts them, and an integer array would truncate a fractional bias).
    bias_E : array_like or torch.Tensor, shape (E,), optional
        Expert bias :math:`p` (the router adds it; an overloaded expert's bias goes down),
        cast to the scores' dtype and device. Default: no bias.

    Returns
    -------
    values_TE : ndarray or torch.Tensor, shape (T, E)
        Same backend as ``scores_TE``.

    Examples
    --------
    >>> import numpy as np
    >>> biased_scores(np.array([[1, 0], [0, 1]]), np.array([0.5, -0.5])).tolist()
    [[1.5, -0.5], [0.5, 0.5]]
    """
    check_scores(scores_TE)
    xp = backend(scores_TE)
    scores_TE = xp.floating(scores_TE)
    if bias_E is None:
        return scores_TE
    check_bias(bias_E, scores_TE.shape[1])
    return scores_TE + xp.as_like(bias_E, scores_TE)


def _topk_mask(values_TE: Any, k: int) -> Any:
    """Boolean top-``k`` mask of every row; ties at the K-th place go to the lowest indices."""
    xp = backend(values_TE)
    (kth_T,) = xp.kth_largest(values_TE, k - 1)  # an O(E) selection per row for numpy
    above_TE = values_TE > kth_T[:, None]
    tie_TE = values_TE == kth_T[:, None]
    need_T = k - above_TE.sum(1)
    # Among tied entries take the lowest indices: the first `need` of them in index order.
    take_TE = tie_TE & (xp.cumcount(tie_TE) <= need_T[:, None])
    return above_TE | take_TE


def route_topk(scores_TE: Any, bias_E: Any = None, k: int = 1) -> Any:
    r"""Route every token to the ``k`` experts with the largest biased scores.

    .. math:: x_{ij} = 1 \iff j \in \operatorname{TopK}_k(\gamma_{i\cdot} + p)

    Parameters
    ----------
    scores_TE : ndarray or torch.Tensor, shape (T, E)
        Router scores ``gamma``.
    bias_E : ndarray or torch.Tensor, shape (E,), optional
        Expert bias ``p`` (the dual variable; added for selection only; an overloaded
        expert's bias goes down). Default 0.
    k : int
        Experts per token, ``1 <= k <= E-1``.

    Returns
    -------
    assignment_TE : bool ndarray or bool torch.Tensor, shape (T, E)
        Exactly ``k`` entries true per row. Ties at the K-th place go to the lowest
        expert indices.

    Examples
    --------
    >>> import numpy as np
    >>> route_topk(np.array([[0.1, 0.9, 0.5], [0.2, 0.2, 0.2]]), k=2).astype(int)
    array([[0, 1, 1],
           [1, 1, 0]])
    """
    values = biased_scores(scores_TE, bias_E)
    return _topk_mask(values, check_k(k, values.shape[1]))


def topk_indices(assignment_TE: Any) -> Any:
    r"""The chosen experts of each token in ascending index order, shape ``(T, K)``.

    .. math:: \text{idx}_{i\cdot} = \{\,j : x_{ij} = 1\,\}\ \text{(sorted)}

    Parameters
    ----------
    assignment_TE : bool array_like or torch.Tensor, shape (T, E)
        The same number ``K`` of true entries in every row (as :func:`route_topk` gives).

    Returns
    -------
    topk_TK : int ndarray or torch.Tensor, shape (T, K)

    Examples
    --------
    >>> topk_indices([[False, True, True], [True, False, True]]).tolist()
    [[1, 2], [0, 2]]
    """
    cols, n_per_row = backend(assignment_TE).true_columns(assignment_TE)
    return cols.reshape(len(assignment_TE), n_per_row)


def expert_load(assignment_TE: Any) -> Any:
    r"""Tokens routed to each expert, shape ``(E,)``, int64.

    .. math:: A_j = \sum_i x_{ij}

    Parameters
    ----------
    assignment_TE : bool or 0/1 array_like or torch.Tensor, shape (T, E)

    Returns
    -------
    load_E : int64 ndarray or torch.Tensor, shape (E,)

    Examples
    --------
    >>> expert_load([[True, False, True], [True, True, False]]).tolist()
    [2, 1, 1]
    """
    return backend(assignment_TE).count(assignment_TE, axis=0)


def topk_sum(values_TE: Any, k: int) -> Any:
    r"""Sum of the ``k`` largest entries of every row, shape ``(T,)``.

    .. math:: \operatorname{TopKSum}_k(v_{i\cdot}) = \max_{|S| = k} \sum_{j \in S} v_{ij}

    Parameters
    ----------
    values_TE : array_like or torch.Tensor, shape (T, E)
        Typically the biased scores ``gamma + p`` (float64 for numpy).
    k : int
        ``1 <= k <= E``; not validated here (callers have checked it).

    Returns
    -------
    sum_T : ndarray or torch.Tensor, shape (T,)

    Examples
    --------
    >>> topk_sum([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]], k=2).tolist()
    [5.0, 9.0]
    """
    return backend(values_TE).topk_values(values_TE, k).sum(1)


def routing_margin(scores_TE: Any, bias_E: Any = None, k: int = 1) -> Any:
    r"""Each token's gap between its K-th and (K+1)-th largest biased score, shape ``(T,)``.

    .. math:: m_i = (\gamma_i + p)_{(K)} - (\gamma_i + p)_{(K+1)} \ge 0

    where :math:`v_{(j)}` is the ``j``-th largest entry. A token whose margin exceeds
    :math:`2 \max_k |\delta p_k|` keeps its top-K set after the bias moves by
    :math:`\delta p` (claim C-c, docs/theory.md section 4). A zero margin is a tie.

    Parameters
    ----------
    scores_TE : array_like or torch.Tensor, shape (T, E)
    bias_E : array_like or torch.Tensor, shape (E,), optional
        The bias the router adds (an overloaded expert's bias goes down).
    k : int
        Experts per token, ``1 <= k <= E-1``.

    Returns
    -------
    margin_T : ndarray or torch.Tensor, shape (T,)

    Examples
    --------
    >>> import numpy as np
    >>> routing_margin(np.array([[0.9, 0.5, 0.1]]), np.array([0.0, 0.0, 0.3]), k=1).tolist()
    [0.4]
    """
    values = biased_scores(scores_TE, bias_E)
    k = check_k(k, values.shape[1])
    kth_T, next_T = backend(values).kth_largest(values, k - 1, k)
    return kth_T - next_T
