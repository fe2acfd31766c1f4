"""Placements, the exact MIP against greedy, per-batch redistribution and node-limited routing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from alflb.ep import (
    Placement,
    contiguous,
    exact,
    greedy,
    make_placement,
    node_limited_scores,
    node_limited_topk,
    nodes_per_token,
    rank_load,
    redistribute,
    redistributed_rank_load,
    round_robin,
)
from alflb.errors import InvalidInputError, UnknownNameError
from alflb.routing import route_topk


def test_rules_place_every_expert_once():
    for p in (contiguous(10, 4, 2), round_robin(10, 4, 2)):
        assert p.n_replicas == 10 and p.replicas_E.tolist() == [1] * 10
        np.testing.assert_allclose(p.share_ER.sum(axis=1), 1.0)
        assert p.node_of_rank_R.tolist() == [0, 0, 1, 1]
    assert contiguous(8, 4).hosted_ER.argmax(axis=1).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert round_robin(8, 4).hosted_ER.argmax(axis=1).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_greedy_follows_eplb_order():
    # replicas to the heaviest load per replica: 12 -> 2 replicas (6 each), then 8 -> 2 (4 each)
    p = greedy([12, 8, 3, 1], n_ranks=4, n_redundant=2)
    assert p.replicas_E.tolist() == [2, 2, 1, 1]
    assert p.slots_per_rank == 2
    assert not (p.hosted_ER.sum(axis=1) > p.n_ranks).any()
    # packing 6, 6, 4, 4, 3, 1 onto 4 ranks, least loaded first: (6), (6), (4+3), (4+1)
    np.testing.assert_allclose(rank_load([12, 8, 3, 1], p), [6, 6, 7, 5])
    assert p.objective == 7.0


def test_exact_strictly_better_on_constructed_instance():
    # LPT greedy: 5 | 4, 3 -> 7 | 5+3 = 8 | 7+3 = 10; the optimum pairs {5, 4} and {3, 3, 3}.
    loads = [5, 4, 3, 3, 3]
    g = greedy(loads, n_ranks=2, slots_per_rank=3)
    x = exact(loads, n_ranks=2, slots_per_rank=3)
    assert (g.objective, x.objective, x.status) == (10.0, 9.0, "optimal")
    np.testing.assert_allclose(rank_load(loads, x).max(), 9.0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=2, max_size=7), st.integers(1, 3), st.integers(0, 2))
def test_exact_never_worse_than_greedy(loads, n_ranks, n_redundant):
    assume(sum(loads) > 0)
    try:
        g = greedy(loads, n_ranks, n_redundant=n_redundant)
    except InvalidInputError:  # more replicas than ranks for every expert
        assume(False)
    x = exact(loads, n_ranks, n_redundant=n_redundant, slots_per_rank=g.slots_per_rank)
    assert x.status == "optimal"
    assert x.objective <= g.objective + 1e-6 * max(loads)
    assert x.objective >= sum(loads) / n_ranks - 1e-6 * max(loads)  # the balanced lower bound
    assert x.n_replicas <= len(loads) + n_redundant
    assert (x.hosted_ER.sum(axis=0) <= x.slots_per_rank).all()


def _hall_bound(load_E, hosted_ER):
    """max over rank subsets S of (load of experts hosted only in S) / |S|: the LP optimum."""
    r = hosted_ER.shape[1]
    best = 0.0
    for size in range(1, r + 1):
        for s in itertools.combinations(range(r), size):
            inside = ~hosted_ER[:, [j for j in range(r) if j not in s]].any(axis=1)
            best = max(best, float(np.asarray(load_E)[inside].sum()) / size)
    return best


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=3, max_size=7), st.integers(2, 4), st.integers(0, 3),
       st.integers(0, 2**16))
def test_redistribution_is_optimal(loads, n_ranks, n_redundant, seed):
    rng = np.random.default_rng(seed)
    fit = rng.integers(1, 50, size=len(loads))
    try:
        p = greedy(fit, n_ranks, n_redundant=n_redundant)
    except InvalidInputError:
        assume(False)
    q = redistribute(loads, p)
    np.testing.assert_allclose(q.objective, _hall_bound(loads, p.hosted_ER), atol=1e-7)
    assert q.objective <= rank_load(loads, p).max() + 1e-9  # never worse than the even split
    np.testing.assert_allclose(rank_load(loads, q).sum(), sum(loads))
    assert (q.hosted_ER == p.hosted_ER).all()


def test_redistributed_rank_load_rows():
    p = greedy([6, 2, 2, 2], n_ranks=2, n_redundant=2)
    out = redistributed_rank_load([[6, 4, 0, 0], [0, 0, 2, 2]], p)
    np.testing.assert_allclose(out, [[5, 5], [2, 2]])


def test_placement_validation():
    with pytest.raises(InvalidInputError, match="multiple of n_nodes"):
        contiguous(8, 3, 2)
    with pytest.raises(InvalidInputError, match="cannot hold"):
        greedy([1, 2, 3, 4, 5], 2, slots_per_rank=2)
    with pytest.raises(UnknownNameError, match="placement"):
        make_placement("random", [1, 2], 2)
    with pytest.raises(InvalidInputError, match="at least one replica"):
        Placement("x", np.zeros((2, 2), dtype=bool), np.zeros((2, 2)))
    with pytest.raises(InvalidInputError, match="experts"):
        rank_load([1, 2, 3], contiguous(4, 2))


# node-limited routing ---------------------------------------------------------------------

def test_node_limited_keeps_at_most_m_nodes():
    rng = np.random.default_rng(1)
    scores = rng.random((200, 16))
    bias = rng.normal(0, 0.3, 16)
    nodes = np.repeat(np.arange(4), 4)
    x = node_limited_topk(scores, bias, nodes, k=4, max_nodes=2)
    assert (x.sum(axis=1) == 4).all()
    assert (nodes_per_token(x, nodes) <= 2).all()
    # with M = all nodes it is plain top-K
    np.testing.assert_array_equal(node_limited_topk(scores, bias, nodes, 4, 4), route_topk(scores, bias, 4))


def test_node_score_is_top_k_over_m_sum():
    # K=4, M=2: nodes ranked by their top-2 sum. Node 0: 0.9 + 0.1 = 1.0;
    # node 1: 0.6 + 0.6 = 1.2; node 2: 0.8 + 0.5 = 1.3 -> keep nodes 2 and 1.
    s = np.array([[0.9, 0.1, 0.6, 0.6, 0.8, 0.5]])
    masked = node_limited_scores(s, None, [0, 0, 1, 1, 2, 2], k=4, max_nodes=2)
    assert np.isneginf(masked[0, :2]).all()
    assert node_limited_topk(s, None, [0, 0, 1, 1, 2, 2], 4, 2).astype(int).tolist() == [[0, 0, 1, 1, 1, 1]]


def test_masked_experts_get_minus_inf_not_zero():
    # Node 0 wins (biased top score -0.6 against -1.8), but every biased score is negative.
    # The mutant that fills masked experts with 0 then picks a masked expert; -inf never does.
    s = np.array([[0.9, 0.8, 0.2, 0.1]])
    bias = np.array([-1.5, -1.5, -2.0, -2.0])
    nodes = [0, 0, 1, 1]
    masked = node_limited_scores(s, bias, nodes, k=1, max_nodes=1)
    assert np.isneginf(masked[0, 2:]).all()
    x = node_limited_topk(s, bias, nodes, k=1, max_nodes=1)
    assert x.astype(int).tolist() == [[1, 0, 0, 0]]
    zero_filled = np.where(np.isneginf(masked), 0.0, masked)
    assert zero_filled[0].argmax() == 2  # the mutant leaves the kept node


def test_node_limited_validation():
    with pytest.raises(InvalidInputError, match="fewer than k"):
        node_limited_scores(np.zeros((1, 4)), None, [0, 1, 2, 3], k=2, max_nodes=1)
    with pytest.raises(InvalidInputError, match="node_of_expert_E"):
        node_limited_scores(np.zeros((1, 4)), None, [0, 1], k=1, max_nodes=1)


@pytest.mark.parametrize("seed", range(2))
def test_exact_matches_brute_force_without_replicas(seed):
    rng = np.random.default_rng(seed)
    loads = rng.integers(0, 30, size=6)
    best = min(
        max(sum(loads[k] for k in range(6) if ranks[k] == j) for j in range(3))
        for ranks in itertools.product(range(3), repeat=6)
        if max(np.bincount(ranks, minlength=3)) <= 2
    )
    x = exact(loads, n_ranks=3, slots_per_rank=2)
    assert x.status == "optimal"
    np.testing.assert_allclose(x.objective, best, rtol=1e-9)


def test_node_limited_numpy_torch_parity():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    scores = rng.random((64, 12))
    scores[:, 5] = scores[:, 4]  # ties inside a node
    bias = rng.normal(0, 0.2, 12)
    nodes = np.repeat(np.arange(4), 3)
    want = node_limited_topk(scores, bias, nodes, 4, 2)
    got = node_limited_topk(torch.as_tensor(scores), torch.as_tensor(bias), nodes, 4, 2)
    np.testing.assert_array_equal(got.numpy(), want)
    masked = node_limited_scores(torch.as_tensor(scores), torch.as_tensor(bias), nodes, 4, 2)
    np.testing.assert_array_equal(masked.numpy(), node_limited_scores(scores, bias, nodes, 4, 2))
