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

import numpy as np

from ._array import check_bias, check_k, check_scores, is_torch, to_numpy

__all__ = [
    "biased_scores",
    "expert_load",
    "route_topk",
    "routing_margin",
    "topk_indices",
    "topk_sum",
]


def biased_scores(scores_TE: Any, bias_E: Any = None) -> Any:
    """Return ``scores_TE + bias_E`` (broadcast over tokens), validating both."""
    check_scores(scores_TE)
    # Lists, ints and bools become float64: top-K negates and subtracts the values, and an
    # integer array would truncate a fractional bias.
    if is_torch(scores_TE):
        if not scores_TE.is_floating_point():
            import torch

            scores_TE = scores_TE.to(torch.float64)
    else:
        scores_TE = np.asarray(scores_TE)
        if not np.issubdtype(scores_TE.dtype, np.floating):
            scores_TE = scores_TE.astype(np.float64)
    if bias_E is None:
        return scores_TE
    check_bias(bias_E, scores_TE.shape[1])
    if is_torch(scores_TE):
        import torch

        bias = bias_E if is_torch(bias_E) else torch.as_tensor(np.asarray(bias_E))
        return scores_TE + bias.to(device=scores_TE.device, dtype=scores_TE.dtype)
    return scores_TE + to_numpy(bias_E, dtype=scores_TE.dtype)


def _topk_mask_numpy(values_TE: np.ndarray, k: int) -> np.ndarray:
    # K-th largest value per row, via an O(E) selection rather than a sort.
    kth_T = -np.partition(-values_TE, k - 1, axis=1)[:, k - 1]
    above_TE = values_TE > kth_T[:, None]
    tie_TE = values_TE == kth_T[:, None]
    need_T = k - above_TE.sum(axis=1)
    # Among tied entries take the lowest indices: the first `need` of them in index order.
    take_TE = tie_TE & (np.cumsum(tie_TE, axis=1) <= need_T[:, None])
    return above_TE | take_TE


def _topk_mask_torch(values_TE, k: int):
    import torch

    kth_T = torch.topk(values_TE, k, dim=1, sorted=True).values[:, k - 1]
    above_TE = values_TE > kth_T[:, None]
    tie_TE = values_TE == kth_T[:, None]
    need_T = k - above_TE.sum(dim=1)
    take_TE = tie_TE & (torch.cumsum(tie_TE.to(torch.int64), dim=1) <= need_T[:, None])
    return above_TE | take_TE


def route_topk(scores_TE: Any, bias_E: Any = None, k: int = 1) -> Any:
    r"""Route every token to the ``k`` experts with the largest biased scores.

    .. math:: x_{ik} = 1 \iff k \in \operatorname{TopK}_j(\gamma_{ij} + p_j)

    Parameters
    ----------
    scores_TE : ndarray or torch.Tensor, shape (T, E)
        Router scores ``gamma``.
    bias_E : ndarray or torch.Tensor, shape (E,), optional
        Expert bias ``p`` (the dual variable; added for selection only). Default 0.
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
    k = check_k(k, values.shape[1])
    if is_torch(values):
        return _topk_mask_torch(values, k)
    return _topk_mask_numpy(np.asarray(values), k)


def topk_indices(assignment_TE: Any) -> Any:
    """The chosen experts of each token in ascending index order, shape ``(T, K)``.

    ``assignment_TE`` must have the same number of true entries in every row.
    """
    if is_torch(assignment_TE):
        import torch

        n_per_row = int(assignment_TE[0].sum())
        idx = torch.nonzero(assignment_TE, as_tuple=False)[:, 1]
        return idx.reshape(assignment_TE.shape[0], n_per_row)
    mask = np.asarray(assignment_TE, dtype=bool)
    n_per_row = int(mask[0].sum())
    return np.nonzero(mask)[1].reshape(mask.shape[0], n_per_row)


def expert_load(assignment_TE: Any) -> Any:
    """Tokens routed to each expert, ``A_k = sum_i x_ik``, shape ``(E,)``, int64."""
    if is_torch(assignment_TE):
        import torch

        return assignment_TE.to(torch.int64).sum(dim=0)
    return np.asarray(assignment_TE).sum(axis=0, dtype=np.int64)


def topk_sum(values_TE: Any, k: int) -> Any:
    """Sum of the ``k`` largest entries of every row, shape ``(T,)`` (float64 for numpy)."""
    if is_torch(values_TE):
        import torch

        return torch.topk(values_TE, k, dim=1).values.sum(dim=1)
    v = np.asarray(values_TE, dtype=np.float64)
    return -np.partition(-v, k - 1, axis=1)[:, :k].sum(axis=1)


def routing_margin(scores_TE: Any, bias_E: Any = None, k: int = 1) -> Any:
    r"""Each token's gap between its K-th and (K+1)-th largest biased score, shape ``(T,)``.

    .. math:: m_i = (\gamma_i + p)_{(K)} - (\gamma_i + p)_{(K+1)} \ge 0

    A token whose margin exceeds ``2 max_k |delta p_k|`` keeps its top-K set after the
    bias moves by ``delta p`` (SPEC C-c). A zero margin is a tie.
    """
    values = biased_scores(scores_TE, bias_E)
    k = check_k(k, values.shape[1])
    if is_torch(values):
        import torch

        top = torch.topk(values, k + 1, dim=1, sorted=True).values
        return top[:, k - 1] - top[:, k]
    v = np.asarray(values, dtype=np.float64)
    part = -np.partition(-v, (k - 1, k), axis=1)
    return part[:, k - 1] - part[:, k]
