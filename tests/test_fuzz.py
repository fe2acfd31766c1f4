"""Fuzz the public entry points: a valid result or a documented error, never anything else.

Arrays are arbitrary (any float64 including NaN, inf, huge and subnormal values; ints;
bools; wrong ranks and empty shapes) and so are the parameters. Every call must either
return a valid result (a certified solve, exactly ``k`` experts per token, finite values)
or raise an :class:`~alflb.errors.AlflbError`; any other exception fails the test.
"""

from __future__ import annotations

import math
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st

import alflb
from alflb.errors import AlflbError

FLOATS = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True, width=64)
NICE = st.floats(-1e3, 1e3, allow_subnormal=True)
SOLVE_METHODS = [m for m in alflb.available_methods() if m != "cvxpy"]


def arrays(max_dims: int = 3, max_side: int = 6, min_dims: int = 0):
    """Any small array: float64 (anything), int64 or bool, of any rank up to ``max_dims``."""
    shape = hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side)
    return st.one_of(
        hnp.arrays(np.float64, shape, elements=FLOATS),
        hnp.arrays(np.float64, shape, elements=NICE),
        hnp.arrays(np.int64, shape, elements=st.integers(-5, 10)),
        hnp.arrays(np.bool_, shape),
    )


def score_matrices():
    """Mostly 2-D (T, E) matrices, sometimes anything."""
    shape = st.tuples(st.integers(0, 6), st.integers(0, 5))
    return st.one_of(
        hnp.arrays(np.float64, shape, elements=NICE),
        hnp.arrays(np.float64, shape, elements=FLOATS),
        hnp.arrays(np.float64, shape, elements=st.sampled_from([0.0, 1.0, -1.0, 5e-324, 1e30, -1e30])),
        hnp.arrays(np.int64, shape, elements=st.integers(-3, 3)),
        hnp.arrays(np.bool_, shape),
        arrays(),
    )


KS = st.one_of(st.integers(-1, 6), st.sampled_from([1.0, True, None, "2"]))
SCALARS = st.one_of(FLOATS, st.integers(-3, 10), st.sampled_from([None, True, "x"]))


def attempt(fn, *args, **kwargs):
    """``fn(...)``, or None when it raises a documented alflb error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings are allowed; exceptions are the contract
            return fn(*args, **kwargs)
    except AlflbError:
        return None


def _problem(data, scores):
    k = data.draw(KS, label="k")
    kind = data.draw(st.sampled_from(["balanced", "capacity", "at_most", "rounded"]), label="kind")
    if kind == "balanced":
        return attempt(alflb.AssignmentProblem, scores, k)
    if kind == "rounded":
        return attempt(alflb.AssignmentProblem.with_rounded_capacity, scores, k)
    cap = data.draw(arrays(max_dims=2), label="capacity")
    return attempt(alflb.AssignmentProblem, scores, k, cap,
                   capacity_kind="at_most" if kind == "at_most" else "equal")


@st.composite
def plausible_problems(draw):
    """Right shapes and ``k``, any values: most draws reach the solvers."""
    n_experts = draw(st.integers(2, 5))
    n_tokens = draw(st.integers(1, 6))
    k = draw(st.integers(1, n_experts - 1))
    elements = st.one_of(NICE, st.sampled_from([0.0, 1.0, -1.0, 5e-324, 1e30, -1e30, 1e-300]),
                         st.integers(-3, 3).map(float))
    scores = draw(hnp.arrays(np.float64, (n_tokens, n_experts), elements=elements))
    kind = draw(st.sampled_from(["rounded", "at_most", "balanced"]))
    if kind == "rounded":
        return attempt(alflb.AssignmentProblem.with_rounded_capacity, scores, k)
    if kind == "at_most":
        cap = draw(hnp.arrays(np.int64, n_experts, elements=st.integers(0, n_tokens + 1)))
        return attempt(alflb.AssignmentProblem, scores, k, cap, capacity_kind="at_most")
    return attempt(alflb.AssignmentProblem, scores, k)


@given(st.data(), plausible_problems())
def test_problem_solve_certify_dual(data, plausible):
    # one draw in four builds the problem from an arbitrary array instead
    arbitrary = data.draw(st.integers(0, 3), label="arbitrary") == 0
    prob = _problem(data, data.draw(score_matrices(), label="scores")) if arbitrary else plausible
    event("valid problem" if prob is not None else "refused problem")
    if prob is None:
        return
    assert np.isfinite(prob.scores_TE).all() and 1 <= prob.k < prob.n_experts
    for method in SOLVE_METHODS:
        res = attempt(alflb.solve, prob, method)
        if res is None:
            continue
        assert res.success and res.certificate.ok, (method, res.message)
        x = res.assignment_TE
        assert (x.sum(axis=1) == prob.k).all()
        loads = x.sum(axis=0)
        if prob.capacity_kind == "equal":
            assert np.array_equal(loads, prob.capacity_E)
        else:
            assert (loads <= prob.capacity_E).all()
        again = alflb.certify(prob, x, res.bias_E)
        assert again.ok
        g = alflb.dual_function(prob, res.bias_E)
        assert math.isfinite(g)
    bias = data.draw(arrays(max_dims=2), label="bias")
    g = attempt(alflb.dual_function, prob, bias)
    assert g is None or math.isfinite(g)
    x = data.draw(arrays(max_dims=2), label="x")
    cert = attempt(alflb.certify, prob, x, bias)
    if cert is not None:
        assert math.isfinite(cert.gap) and math.isfinite(cert.objective)


@given(score_matrices(), arrays(max_dims=2), KS)
def test_route_topk(scores, bias, k):
    for b in (None, bias):
        x = attempt(alflb.route_topk, scores, b, k)
        if x is None:
            continue
        assert x.dtype == bool and x.shape == np.shape(scores)
        assert (x.sum(axis=1) == k).all()


RULE_PARAMS = {"sign": "u", "centred": "u", "uniform": "eps", "decay": "a", "momentum": "u",
               "multiplicative": "u", "frozen_tail": "u"}


@given(st.data(), st.sampled_from(alflb.available_rules()), SCALARS, arrays(max_dims=2),
       arrays(max_dims=2), st.one_of(arrays(max_dims=2), SCALARS))
def test_rule_update(data, name, step, bias, load, capacity):
    params = {}
    if name in RULE_PARAMS and data.draw(st.booleans(), label="set step"):
        params[RULE_PARAMS[name]] = step
    if name == "per_expert":
        params["eps_E"] = data.draw(arrays(max_dims=1), label="eps_E")
    rule = attempt(alflb.make_rule, name, **params)
    if rule is None:
        return
    scores = data.draw(score_matrices(), label="scores") if rule.needs_scores else None
    out = attempt(rule.update, bias, load, capacity, scores_TE=scores)
    if out is None:
        return
    new = np.asarray(out.bias_E)
    assert new.shape == np.shape(bias) and np.isfinite(new).all()
    assert out.state.n_updates == 1


@given(arrays(), st.one_of(st.none(), arrays()))
def test_max_violation(load, capacity):
    out = attempt(alflb.max_violation, load, capacity)
    if out is not None:
        assert np.isfinite(out).all()


@given(st.sampled_from([s for s in alflb.available_streams() if s != "trace"]), SCALARS,
       st.sampled_from(["sigmoid", "softmax", "none", "relu"]),
       st.integers(-1, 3), st.integers(-1, 6), st.integers(-1, 5), st.integers(0, 2**32))
def test_stream_sample(name, sigma, activation, n_steps, n_tokens, n_experts, seed):
    stream = attempt(alflb.make_stream, name, sigma=sigma, activation=activation)
    if stream is None:
        return
    out = attempt(stream.sample, n_steps, n_tokens, n_experts, rng=seed)
    if out is not None:
        assert out.shape == (n_steps, n_tokens, n_experts) and out.dtype == np.float32
        assert np.isfinite(out).all()


@given(
    st.sampled_from(["gaussian", "skewed", "nope", "trace", 3]),
    st.lists(st.sampled_from(["none", "sign", "sign:u=-1", "decay:a=nan", "sinkhorn", "bogus",
                              "quantile", "sign:u=0.1"]), max_size=3),
    st.integers(-1, 40), st.integers(-1, 9), st.integers(-1, 4), SCALARS, SCALARS,
    st.sampled_from(["fast", "highs", "simplex", None]),
)
def test_simulation_config(stream, policies, n_tokens, n_experts, k, u, tau, solver):
    cfg = attempt(alflb.SimulationConfig, stream=stream, policies=tuple(policies), n_steps=2,
                  n_tokens=n_tokens, n_experts=n_experts, k=k, n_seeds=1, u=u,
                  sinkhorn_tau=tau if tau is not None else 0.05, solver=solver)
    if cfg is not None:
        assert cfg.k * cfg.n_tokens % cfg.n_experts == 0
        assert cfg.solver in alflb.available_methods()
        assert cfg.u is None or (math.isfinite(cfg.u) and cfg.u >= 0)
