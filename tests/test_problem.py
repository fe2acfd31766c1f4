"""AssignmentProblem validation and capacity helpers: every message pinned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alflb import (
    AssignmentProblem,
    InfeasibleProblemError,
    InvalidInputError,
    balanced_capacity,
    rounded_capacity,
)


def test_balanced_default_and_flags():
    prob = AssignmentProblem(np.zeros((8, 4)), 2)
    np.testing.assert_array_equal(prob.capacity_E, [4, 4, 4, 4])
    assert prob.balanced and prob.shape == (8, 4, 2)
    assert "balanced" in repr(prob)
    assert not AssignmentProblem(np.zeros((8, 4)), 2, capacity_E=[5, 3, 4, 4]).balanced


def test_scores_are_copied_readonly_float32_kept():
    raw = np.arange(12, dtype=np.float32).reshape(6, 2)
    prob = AssignmentProblem(raw, 1)
    assert prob.scores_TE.dtype == np.float32 and not prob.scores_TE.flags.writeable
    assert AssignmentProblem(raw.astype(np.int64), 1).scores_TE.dtype == np.float64
    raw[0, 0] = 99
    assert prob.scores_TE[0, 0] == 0
    from_torch = AssignmentProblem(torch.arange(12.0).reshape(6, 2), 1)
    np.testing.assert_array_equal(from_torch.scores_TE, prob.scores_TE)


@pytest.mark.parametrize(
    ("scores", "k", "match"),
    [
        (np.zeros(4), 1, r"must be 2-D \(tokens T, experts E\), got shape \(4,\)"),
        (np.zeros((0, 3)), 1, "is empty"),
        (np.array([[0.0, np.nan]]), 1, "contains NaN or inf"),
        (np.array([[0.0, np.inf]]), 1, "contains NaN or inf"),
        (np.array([["a", "b"]]), 1, "must be numeric"),
        (np.array([[1 + 1j, 0]]), 1, "complex"),
        (np.zeros((4, 1)), 1, "need at least 2 experts"),
        (np.zeros((4, 3)), 3, r"k must satisfy 1 <= k <= E-1 = 2, got k=3"),
        (np.zeros((4, 3)), 0, "k must satisfy"),
        (np.zeros((4, 3)), 1.5, "k must be an integer"),
        (np.zeros((4, 3)), True, "k must be an integer"),
    ],
)
def test_invalid_scores_and_k(scores, k, match):
    with pytest.raises(InvalidInputError, match=match):
        AssignmentProblem(scores, k)


def test_unbalanced_total_names_remedies():
    with pytest.raises(InfeasibleProblemError, match=r"K\*T/E = 1\*10/4 = 2.5 is not an integer.*with_rounded_capacity"):
        AssignmentProblem(np.zeros((10, 4)), 1)
    with pytest.raises(InfeasibleProblemError, match="is not an integer"):
        balanced_capacity(10, 4, 1)


@pytest.mark.parametrize(
    ("capacity", "kind", "error", "match"),
    [
        ([2, 2], "equal", InvalidInputError, r"capacity_E must have shape \(E,\) = \(3,\), got \(2,\)"),
        ([2, 2, np.nan], "equal", InvalidInputError, "capacity_E contains NaN or inf"),
        ([2, 2.5, 1.5], "equal", InvalidInputError, "capacity_E must be integers"),
        ([7, -1, 0], "equal", InvalidInputError, "capacity_E must be non-negative"),
        (["a", "b", "c"], "equal", InvalidInputError, "capacity_E must be real numbers"),
        ([2, 2, 1], "equal", InfeasibleProblemError, r"must sum to K\*T = 1\*6 = 6, got 5"),
        ([7, 0, -1 + 0], "equal", InvalidInputError, "non-negative"),
        ([1, 1, 1], "at_most", InfeasibleProblemError, r"sum to 3 < K\*T = 6"),
        ([2, 2, 2], "sometimes", InvalidInputError, "capacity_kind must be 'equal' or 'at_most'"),
    ],
)
def test_invalid_capacity(capacity, kind, error, match):
    with pytest.raises(error, match=match):
        AssignmentProblem(np.zeros((6, 3)), 1, capacity_E=capacity, capacity_kind=kind)


def test_capacity_above_token_count():
    with pytest.raises(InfeasibleProblemError, match=r"cannot take more than T = 6 tokens.*got capacity 7"):
        AssignmentProblem(np.zeros((6, 3)), 2, capacity_E=[7, 5, 0])


def test_at_most_needs_capacity():
    with pytest.raises(InvalidInputError, match="needs an explicit capacity_E"):
        AssignmentProblem(np.zeros((6, 3)), 1, capacity_kind="at_most")


def test_rounded_capacity():
    np.testing.assert_array_equal(rounded_capacity(10, 4, 1), [3, 3, 2, 2])
    prob = AssignmentProblem.with_rounded_capacity(np.zeros((10, 4)), 3)
    assert prob.capacity_E.sum() == 30 and prob.capacity_E.max() - prob.capacity_E.min() <= 1
    with pytest.raises(InvalidInputError, match="k must satisfy"):
        AssignmentProblem.with_rounded_capacity(np.zeros((10, 4)), 4)


def test_capacity_factor():
    prob = AssignmentProblem.with_capacity_factor(np.zeros((10, 4)), 2, 1.25)
    assert prob.capacity_kind == "at_most"
    np.testing.assert_array_equal(prob.capacity_E, [7, 7, 7, 7])  # ceil(1.25 * 5)
    np.testing.assert_array_equal(
        AssignmentProblem.with_capacity_factor(np.zeros((8, 4)), 2, 1.0).capacity_E, [4, 4, 4, 4]
    )
    with pytest.raises(InfeasibleProblemError, match="capacity_factor must be >= 1"):
        AssignmentProblem.with_capacity_factor(np.zeros((10, 4)), 2, 0.9)
    with pytest.raises(InvalidInputError, match="capacity_factor must be a finite number"):
        AssignmentProblem.with_capacity_factor(np.zeros((10, 4)), 2, float("nan"))
