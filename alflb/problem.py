r"""The top-K assignment problem of one batch.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

.. math::

    \max_x \sum_{i,k} \gamma_{ik} x_{ik}
    \quad\text{s.t.}\quad \sum_k x_{ik} = K \;\forall i,\qquad
    \sum_i x_{ik} = c_k \;\forall k,\qquad x_{ik} \in \{0, 1\}.

``gamma`` (``scores_TE``) is any real matrix (sigmoid or softmax scores, or logits). The
balanced capacity is ``L = K*T/E``; a general integer capacity vector ``c`` with
``sum(c) = K*T`` is allowed. The constraint matrix is the incidence matrix of a
bipartite graph, hence totally unimodular: the LP relaxation with ``0 <= x <= 1`` has
an integral optimal vertex and the same value. The bound ``x <= 1`` is essential.

With ``capacity_kind="at_most"`` the expert constraints read ``sum_i x_ik <= c_k``
(a capacity factor, as in Switch/GShard); then ``sum(c) >= K*T`` is required and
the duals satisfy ``p <= 0``.

References
----------
.. [HZ] X.Y. Han, Y. Zhong, A Theoretical Framework for Auxiliary-Loss-Free Load
   Balancing of Sparse Mixture-of-Experts in Large-Scale AI Models, arXiv:2512.03915.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._array import check_k, check_scores, to_numpy
from ._validate import finite_float
from .errors import InfeasibleProblemError, InvalidInputError

__all__ = ["AssignmentProblem", "balanced_capacity", "rounded_capacity"]

CapacityKind = Literal["equal", "at_most"]

# Largest score magnitude accepted. The exact machinery sums O(T E) biased scores in
# float64 and the fast solver stores score differences in float32 (max ~3.4e38): beyond
# this bound those sums overflow and a solver would return inf/NaN instead of an optimum.
MAX_ABS_SCORE = 1e30
_MAX_CAPACITY = 2**62


def balanced_capacity(n_tokens: int, n_experts: int, k: int) -> np.ndarray:
    r"""The balanced capacity of every expert, shape ``(E,)``, int64.

    .. math:: c_k = L = \frac{K T}{E}

    Parameters
    ----------
    n_tokens, n_experts, k : int
        ``T``, ``E`` and ``K``.

    Raises
    ------
    InfeasibleProblemError
        When :math:`KT/E` is not an integer, naming the remedies (:func:`rounded_capacity`,
        or ``capacity_kind="at_most"`` with a factor).

    Examples
    --------
    >>> balanced_capacity(6, 3, 2).tolist()
    [4, 4, 4]
    """
    total = k * n_tokens
    if total % n_experts:
        raise InfeasibleProblemError(
            f"the balanced problem is infeasible: K*T/E = {k}*{n_tokens}/{n_experts} = "
            f"{total / n_experts:g} is not an integer. Remedies: pass capacity_E explicitly, "
            "use AssignmentProblem.with_rounded_capacity (floor/ceil capacities that sum to K*T), "
            "or AssignmentProblem.with_capacity_factor (at-most capacities)"
        )
    return np.full(n_experts, total // n_experts, dtype=np.int64)


def rounded_capacity(n_tokens: int, n_experts: int, k: int) -> np.ndarray:
    r"""Floor/ceil capacities summing to ``K*T``, shape ``(E,)``, int64.

    .. math:: c_k = \lfloor KT/E \rfloor + [\,k < KT \bmod E\,]

    (the first :math:`KT \bmod E` experts get the ceiling).

    Parameters
    ----------
    n_tokens, n_experts, k : int
        ``T``, ``E`` and ``K``.

    Examples
    --------
    >>> rounded_capacity(10, 4, 1).tolist()
    [3, 3, 2, 2]
    """
    base, rem = divmod(k * n_tokens, n_experts)
    cap = np.full(n_experts, base, dtype=np.int64)
    cap[:rem] += 1
    return cap


@dataclass(frozen=True, eq=False)
class AssignmentProblem:
    r"""One batch's top-K assignment problem (docs/theory.md section 1).

    .. math::

        \mathrm{OPT} = \max_x \sum_{i,k} \gamma_{ik} x_{ik}
        \quad\text{s.t.}\quad \sum_k x_{ik} = K \;\forall i,\quad
        \sum_i x_{ik} = c_k \;(\text{or} \le c_k) \;\forall k,\quad x_{ik} \in \{0, 1\}

    with :math:`\gamma` the scores (``T`` tokens by ``E`` experts) and :math:`c` the
    capacities. The constraint matrix is totally unimodular, so the LP relaxation with
    :math:`0 \le x \le 1` has the same value. The duals :math:`p` of the expert
    constraints are the ALF-LB biases (the router adds them; an overloaded expert's bias
    goes down); with ``"at_most"`` capacities :math:`p \le 0`.

    Parameters
    ----------
    scores_TE : array_like or torch.Tensor, shape (T, E)
        Router affinities ``gamma``; kept as a read-only numpy copy, float32 when given in
        float32 (routers record in float32: no float64 copy of a large matrix; every solver
        computes with the values in float64), float64 otherwise. Finite,
        with ``|gamma| <=`` :data:`MAX_ABS_SCORE` (``1e30``) so that no solver sum overflows.
    k : int
        Experts per token, ``1 <= k <= E-1``.
    capacity_E : array_like of int, shape (E,), optional
        Expert capacities ``c``. Default: the balanced ``K*T/E`` (an error if it is not an
        integer). With ``capacity_kind="equal"`` they must be non-negative, ``<= T`` and sum
        to ``K*T``; with ``"at_most"`` they must sum to at least ``K*T``.
    capacity_kind : {"equal", "at_most"}
        Whether the expert constraints are equalities (the ALF-LB problem) or upper bounds.

    Examples
    --------
    >>> import numpy as np
    >>> p = AssignmentProblem(np.arange(12.0).reshape(4, 3), k=1, capacity_E=[2, 1, 1])
    >>> p.n_tokens, p.n_experts, p.capacity_E.tolist()
    (4, 3, [2, 1, 1])
    """

    scores_TE: np.ndarray
    k: int
    capacity_E: np.ndarray | None = None
    capacity_kind: CapacityKind = "equal"
    balanced: bool = field(init=False)

    def __post_init__(self) -> None:
        check_scores(self.scores_TE)
        raw = to_numpy(self.scores_TE, dtype=None)
        dtype = np.float32 if raw.dtype == np.float32 else np.float64
        scores = np.array(raw, dtype=dtype, copy=True)
        scores.setflags(write=False)
        biggest = float(np.max(np.abs(scores)))
        if biggest > MAX_ABS_SCORE:
            raise InvalidInputError(
                f"scores_TE entries must be at most {MAX_ABS_SCORE:g} in magnitude (got {biggest:g}): "
                "the dual sums would overflow float64; rescale the scores (the optimum is "
                "invariant to a positive scale)"
            )
        n_tokens, n_experts = scores.shape
        if n_experts < 2:
            raise InvalidInputError(f"need at least 2 experts, got E={n_experts}")
        k = check_k(self.k, n_experts)
        if self.capacity_kind not in ("equal", "at_most"):
            raise InvalidInputError(
                f"capacity_kind must be 'equal' or 'at_most', got {self.capacity_kind!r}"
            )
        if self.capacity_E is None:
            if self.capacity_kind == "at_most":
                raise InvalidInputError("capacity_kind='at_most' needs an explicit capacity_E")
            cap = balanced_capacity(n_tokens, n_experts, k)
        else:
            cap = self._check_capacity(self.capacity_E, n_tokens, n_experts, k, self.capacity_kind)
        cap.setflags(write=False)
        object.__setattr__(self, "scores_TE", scores)
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "capacity_E", cap)
        object.__setattr__(
            self,
            "balanced",
            self.capacity_kind == "equal" and bool(np.all(cap == cap[0])),
        )

    @staticmethod
    def _check_capacity(capacity: Any, n_tokens: int, n_experts: int, k: int, kind: str) -> np.ndarray:
        raw = to_numpy(capacity, dtype=None)
        if raw.ndim != 1 or raw.shape[0] != n_experts:
            raise InvalidInputError(
                f"capacity_E must have shape (E,) = ({n_experts},), got {raw.shape}"
            )
        if not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
            raise InvalidInputError(f"capacity_E must be real numbers, got dtype {raw.dtype}")
        if not np.all(np.isfinite(raw)):
            raise InvalidInputError("capacity_E contains NaN or inf")
        if np.any(raw != np.round(raw)):
            raise InvalidInputError(f"capacity_E must be integers, got {raw.tolist()[:8]}...")
        if np.any(np.abs(raw) > _MAX_CAPACITY):
            # Larger values would wrap around in the int64 cast below.
            raise InvalidInputError(
                f"capacity_E entries must be at most {_MAX_CAPACITY:.0e} in magnitude, got "
                f"{float(np.max(np.abs(raw))):g}"
            )
        cap = raw.astype(np.int64)
        if np.any(cap < 0):
            raise InvalidInputError(f"capacity_E must be non-negative, got min {int(cap.min())}")
        total = int(cap.sum())
        if kind == "equal":
            if total != k * n_tokens:
                raise InfeasibleProblemError(
                    f"capacity_E must sum to K*T = {k}*{n_tokens} = {k * n_tokens}, got {total}"
                )
            if np.any(cap > n_tokens):
                raise InfeasibleProblemError(
                    f"an expert cannot take more than T = {n_tokens} tokens (each token at most "
                    f"once), got capacity {int(cap.max())}"
                )
        else:
            if int(np.minimum(cap, n_tokens).sum()) < k * n_tokens:
                raise InfeasibleProblemError(
                    f"at-most capacities (each clipped to T = {n_tokens}) sum to "
                    f"{int(np.minimum(cap, n_tokens).sum())} < K*T = {k * n_tokens}: no feasible routing"
                )
        return cap

    def as_float64(self) -> AssignmentProblem:
        """This problem with float64 scores (itself when they already are).

        >>> import numpy as np
        >>> p = AssignmentProblem(np.ones((4, 2), dtype=np.float32), k=1)
        >>> p.scores_TE.dtype, p.as_float64().scores_TE.dtype
        (dtype('float32'), dtype('float64'))
        """
        if self.scores_TE.dtype == np.float64:
            return self
        return AssignmentProblem(self.scores_TE.astype(np.float64), self.k, self.capacity_E, self.capacity_kind)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def with_rounded_capacity(cls, scores_TE: Any, k: int) -> AssignmentProblem:
        """The problem with floor/ceil capacities :func:`rounded_capacity` (``"equal"`` kind).

        >>> import numpy as np
        >>> AssignmentProblem.with_rounded_capacity(np.zeros((5, 2)), k=1).capacity_E.tolist()
        [3, 2]
        """
        check_scores(scores_TE)
        n_tokens, n_experts = np.shape(scores_TE)
        check_k(k, n_experts)
        return cls(scores_TE, k, rounded_capacity(n_tokens, n_experts, k))

    @classmethod
    def with_capacity_factor(cls, scores_TE: Any, k: int, capacity_factor: float) -> AssignmentProblem:
        r"""At-most capacities (Switch/GShard style), ``capacity_kind="at_most"``.

        .. math:: c_k = \lceil f \, K T / E \rceil, \qquad f \ge 1

        >>> import numpy as np
        >>> AssignmentProblem.with_capacity_factor(np.zeros((4, 2)), 1, 1.25).capacity_E.tolist()
        [3, 3]
        """
        check_scores(scores_TE)
        n_tokens, n_experts = np.shape(scores_TE)
        check_k(k, n_experts)
        capacity_factor = finite_float(capacity_factor, "capacity_factor")
        if capacity_factor < 1.0:
            raise InfeasibleProblemError(
                f"capacity_factor must be >= 1 for every token to get K experts, got {capacity_factor}"
            )
        cap = math.ceil(capacity_factor * k * n_tokens / n_experts - 1e-12)
        return cls(scores_TE, k, np.full(n_experts, cap, dtype=np.int64), capacity_kind="at_most")

    # ------------------------------------------------------------------ properties
    @property
    def n_tokens(self) -> int:
        """``T``, the number of tokens.

        >>> import numpy as np
        >>> AssignmentProblem(np.zeros((4, 2)), k=1).n_tokens
        4
        """
        return int(self.scores_TE.shape[0])

    @property
    def n_experts(self) -> int:
        """``E``, the number of experts.

        >>> import numpy as np
        >>> AssignmentProblem(np.zeros((4, 2)), k=1).n_experts
        2
        """
        return int(self.scores_TE.shape[1])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(T, E, K)``.

        >>> import numpy as np
        >>> AssignmentProblem(np.zeros((4, 2)), k=1).shape
        (4, 2, 1)
        """
        return self.n_tokens, self.n_experts, self.k

    def __repr__(self) -> str:
        kind = "balanced" if self.balanced else self.capacity_kind
        return f"AssignmentProblem(T={self.n_tokens}, E={self.n_experts}, K={self.k}, {kind})"
