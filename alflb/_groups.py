r"""Group-limited top-K selection (DeepSeek-V3 "noaux_tc"): the one definition alflb uses.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token, ``G`` groups.

The ``E`` experts form ``G`` consecutive groups of ``E / G``. For every token, each group
is ranked by the sum of its ``score_size`` largest biased scores (2 in DeepSeek-V3); the
``topk_group`` best groups are kept, the experts of the others are masked with
:math:`-\infty` (never 0: docs/theory.md section 8), and the top ``K`` of what remains
are selected:

.. math::

    s_{ig} = \sum_{\text{top-}m\ k \in g} v_{ik}, \qquad
    \text{select}_i = \operatorname{TopK}_k\bigl(v_{ik}
        \text{ if } g(k) \in \operatorname{Top}_{\text{topk\_group}}(s_{i\cdot})
        \text{ else } -\infty\bigr),

with ``v = gamma + p`` the biased scores (the router adds the bias; an overloaded
expert's bias goes down). Ties go to the lowest group and expert indices. ``G == 1``
is plain top-K.

:func:`alflb.integrations.replay.replay_group_limited`, :func:`alflb.semantics.route_as`
and the simulator (:mod:`alflb.simulator.policy`) all select through
:func:`group_limited_topk`.

>>> import numpy as np
>>> v = np.array([[0.9, 0.1, 0.8, 0.7]])                 # groups {0, 1}, {2, 3}
>>> group_limited_topk(v, k=2, n_group=2, topk_group=1).tolist()
[[2, 3]]
>>> group_limited_topk(v, k=2, n_group=1, topk_group=1).tolist()
[[0, 2]]
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError

__all__ = ["check_groups", "group_limited_topk"]


def check_groups(n_experts: int, k: int, n_group: int, topk_group: int, what: str = "") -> tuple[int, int]:
    """Validate a group limit against ``E`` and ``K``; returns ``(n_group, topk_group)`` as ints.

    ``n_group`` must divide ``E``, ``1 <= topk_group <= n_group``, and the kept groups must
    hold at least ``K`` experts (``K <= topk_group * E / n_group``), otherwise a masked
    expert would be selected. ``what`` prefixes the message (e.g. ``"--n-group: "``).

    >>> check_groups(8, 2, 4, 2)
    (4, 2)
    """
    for name, value in (("n_group", n_group), ("topk_group", topk_group)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidInputError(f"{what}{name} must be a positive integer, got {value!r}")
    n_group, topk_group = int(n_group), int(topk_group)
    if n_experts % n_group:
        raise InvalidInputError(f"{what}E = {n_experts} experts cannot form n_group = {n_group} equal groups")
    if topk_group > n_group:
        raise InvalidInputError(f"{what}topk_group = {topk_group} exceeds n_group = {n_group}")
    if k > topk_group * (n_experts // n_group):
        raise InvalidInputError(
            f"{what}k = {k} exceeds the {topk_group * (n_experts // n_group)} experts of the "
            f"topk_group = {topk_group} kept groups of {n_experts // n_group}")
    return n_group, topk_group


def group_limited_topk(biased_TE: np.ndarray, k: int, n_group: int = 1, topk_group: int = 1,
                       score_size: int = 2) -> np.ndarray:
    """The selected experts ``(T, K)`` int64 of group-limited top-K (see the module docstring).

    Parameters
    ----------
    biased_TE : ndarray, shape (T, E), floating
        The biased scores ``gamma + p``, in the dtype the comparison is to be made in.
    k, n_group, topk_group : int
        Experts per token, groups, groups kept (validated by the caller:
        :func:`check_groups`).
    score_size : int
        How many of a group's largest biased scores rank it (2 in DeepSeek-V3).

    Returns
    -------
    topk_TK : ndarray of int64, shape (T, K)
        In descending biased score, ties to the lowest index.
    """
    v = np.asarray(biased_TE)
    t, e = v.shape
    if n_group > 1:
        g = v.reshape(t, n_group, e // n_group)
        score_TG = -np.sort(-g, axis=-1)[..., :score_size].sum(-1)
        keep_TG = np.argsort(-score_TG, axis=-1, kind="stable")[:, :topk_group]
        drop_TG = np.ones((t, n_group), dtype=bool)
        np.put_along_axis(drop_TG, keep_TG, False, axis=-1)
        v = np.where(drop_TG[..., None], -np.inf, g).reshape(t, e)
    return np.argsort(-v, axis=-1, kind="stable")[:, :k].astype(np.int64)
