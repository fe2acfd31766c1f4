"""A registry of plausible implementation bugs, run through every check.

Each :class:`Mutant` patches public classes or functions of ``alflb`` for the duration
of a ``with`` block (``unittest.mock.patch.object``; the library itself is never edited)
and says which components it touches. :func:`run_matrix` runs every check of
:data:`CHECKS` under every mutant and records ``caught`` (the check fails or raises),
``missed`` (the check passes) or ``-`` (the check does not exercise the mutated
component, so it cannot catch it; not run). A mutant that no non-identity check catches
makes ``python -m proofs_check --mutants`` exit non-zero: the checks would then be blind
to that bug. The identities (kind ``identity``) catch a reversed rule only through their
``eps >= 0`` assertion: they hold for steps of either sign.

Hooks: every mutant is a wrapper of a public method (``UpdateRule.update``,
``Router.forward``/``select``/``counting``) or a replacement of the public
:func:`alflb.simulator.run_policy`; none needs a private name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from unittest import mock

import numpy as np

from alflb import rules as _rules
from alflb import simulator as _simulator
from alflb.routing import expert_load, route_topk, topk_sum

__all__ = ["CHECKS", "MUTANTS", "Mutant", "format_matrix", "run_matrix", "uncaught"]


@dataclass(frozen=True)
class Mutant:
    name: str
    description: str
    touches: frozenset[str]  # components: "rules", "decay", "simulator", "router", "balancer"
    patch: Callable[[], contextlib.AbstractContextManager]


# --------------------------------------------------------------------------- rule mutants
def _reversed(cls):
    """``p -= eps (c - A)`` while reporting the step it took (``-eps``)."""
    real = cls.update

    def update(self, bias_E, load_E, capacity_E, state=None, scores_TE=None):
        out = real(self, bias_E, load_E, capacity_E, state, scores_TE)
        step = None if out.step_E is None else -out.step_E
        bias = bias_E if hasattr(bias_E, "shape") else np.asarray(bias_E, dtype=np.float64)
        return _rules.RuleUpdate(2 * bias - out.bias_E, out.state, step)

    return mock.patch.object(cls, "update", update)


@contextlib.contextmanager
def _reversed_proportional():
    with _reversed(_rules.UniformRule), _reversed(_rules.PerExpertRule), _reversed(_rules.DecayRule):
        yield


def _decay_replaced(kind: str):
    """The ``1/(mu n)`` slot given a constant step (``a / 20``) or the sign rule."""
    real = _rules.DecayRule.update

    def update(self, bias_E, load_E, capacity_E, state=None, scores_TE=None):
        state = state if state is not None else _rules.RuleState(n_updates=0)
        if kind == "constant":
            out = real(self, bias_E, load_E, capacity_E, _rules.RuleState(n_updates=19), scores_TE)
            return _rules.RuleUpdate(out.bias_E, dataclasses.replace(state, n_updates=state.n_updates + 1),
                                     out.step_E)  # fmt: skip
        return _rules.SignRule(u=0.01).update(bias_E, load_E, capacity_E, state, scores_TE)

    return mock.patch.object(_rules.DecayRule, "update", update)


# --------------------------------------------------------------------------- simulator mutants
def _loop(rule, scores_NTE, k, rule_cap_E, causal: bool):
    """A hand-written simulator loop (what a buggy re-implementation would look like)."""
    _, n_tokens, n_experts = scores_NTE.shape
    cap = np.full(n_experts, k * n_tokens / n_experts)
    bias = np.asarray(rule.initial_bias(n_experts), dtype=np.float64)
    state = rule.init_state(n_experts)
    bias_NE, load_NE, f_N = [], [], []
    for scores in scores_NTE:
        if not causal:  # peeks at this batch's loads before routing it
            out = rule.update(bias, expert_load(route_topk(scores, bias, k)), rule_cap_E, state)
            bias, state = np.asarray(out.bias_E, dtype=np.float64), out.state
        load = expert_load(route_topk(scores, bias, k))
        bias_NE.append(bias)
        load_NE.append(load)
        f_N.append(float(topk_sum(scores + bias, k).sum() - cap @ bias))
        if causal:
            out = rule.update(bias, load, rule_cap_E, state)
            bias, state = np.asarray(out.bias_E, dtype=np.float64), out.state
    return SimpleNamespace(bias_NE=np.array(bias_NE), load_NE=np.array(load_NE), f_N=np.array(f_N))


def _simulator_replaced(causal: bool, capacity_per_token_k: bool):
    def run_policy(policy, scores_NTE, k, capacity_E=None, **_ignored):
        rule = _rules.make_rule(policy) if isinstance(policy, str) else policy
        scores_NTE = np.asarray(scores_NTE, dtype=np.float64)
        _, n_tokens, n_experts = scores_NTE.shape
        per = (k if capacity_per_token_k else 1) * n_tokens / n_experts
        return _loop(rule, scores_NTE, k, np.full(n_experts, per), causal)

    return mock.patch.object(_simulator, "run_policy", run_policy)


# --------------------------------------------------------------------------- model mutants
def _router_cls():
    from alflb.model.transformer import Router

    return Router


@contextlib.contextmanager
def _bias_in_gates():
    from alflb.model.transformer import RouterOutput

    router = _router_cls()
    real = router.forward

    def forward(self, x_TD, batch_size=1):
        out = real(self, x_TD, batch_size)
        gates = (out.scores_TE + self.expert_bias).gather(1, out.topk_TK)
        if self.normalize_gates:
            gates = gates / (gates.sum(-1, keepdim=True) + 1e-20)
        return RouterOutput(out.scores_TE, out.topk_TK, gates * self.route_scale, out.batch_size)

    with mock.patch.object(router, "forward", forward):
        yield


@contextlib.contextmanager
def _subtracting_router():
    router = _router_cls()
    real = router.select

    def select(self, scores_TE):
        saved = self.expert_bias.clone()
        self.expert_bias.neg_()
        try:
            return real(self, scores_TE)
        finally:
            self.expert_bias.copy_(saved)

    with mock.patch.object(router, "select", select):
        yield


@contextlib.contextmanager
def _zero_masking():
    router = _router_cls()

    def select(self, scores_TE):
        biased = scores_TE + self.expert_bias
        if self.n_groups > 1:
            n_tokens, n_experts = biased.shape
            grouped = biased.view(n_tokens, self.n_groups, n_experts // self.n_groups)
            keep = grouped.topk(2, dim=-1).values.sum(-1).topk(self.topk_groups, dim=-1).indices
            drop = keep.new_ones(grouped.shape[:2], dtype=bool).scatter_(1, keep, False)
            biased = grouped.masked_fill(drop[..., None], 0.0).view(n_tokens, n_experts)
        return biased.topk(self.top_k, dim=-1).indices

    with mock.patch.object(router, "select", select):
        yield


@contextlib.contextmanager
def _count_in_eval():
    with mock.patch.object(_router_cls(), "counting", lambda self: True):
        yield


@contextlib.contextmanager
def _micro_batch_counting():
    router = _router_cls()
    real = router.forward

    def forward(self, x_TD, batch_size=1):
        if self.counting():
            self.reset_load_count()  # keeps only the last micro-batch's counts
        return real(self, x_TD, batch_size)

    with mock.patch.object(router, "forward", forward):
        yield


MUTANTS = (
    Mutant("reversed-sign", "p -= u sign(c - A), reporting its (negative) step",
           frozenset({"rules"}), lambda: _reversed(_rules.SignRule)),
    Mutant("reversed-proportional", "p -= eps (c - A) for uniform, per-expert and decaying steps",
           frozenset({"rules", "decay"}), _reversed_proportional),
    Mutant("bias-in-gates", "gate weights from scores + bias", frozenset({"router"}), _bias_in_gates),
    Mutant("subtracting-router", "router selects top-K of scores - bias",
           frozenset({"router"}), _subtracting_router),
    Mutant("non-causal-update", "simulator updates with the current batch's load before routing it",
           frozenset({"simulator"}), lambda: _simulator_replaced(causal=False, capacity_per_token_k=True)),
    Mutant("wrong-capacity", "simulator target T/E instead of K T/E",
           frozenset({"simulator"}), lambda: _simulator_replaced(causal=True, capacity_per_token_k=False)),
    Mutant("micro-batch-counting", "loads of the last micro-batch only", frozenset({"balancer"}),
           _micro_batch_counting),
    Mutant("eval-counting", "loads counted in eval mode and under no_grad", frozenset({"balancer"}),
           _count_in_eval),
    Mutant("zero-masking", "masked groups filled with 0 instead of -inf", frozenset({"router"}),
           _zero_masking),
    Mutant("constant-step-decay", "the 1/(mu n) slot takes a constant step 1/(20 mu)",
           frozenset({"decay"}), lambda: _decay_replaced("constant")),
    Mutant("sign-rule-decay", "the 1/(mu n) slot takes the sign rule, u = 0.01",
           frozenset({"decay"}), lambda: _decay_replaced("sign")),
)  # fmt: skip


# --------------------------------------------------------------------------- checks
def _claim(module: str) -> Callable:
    import importlib

    def run(profile, seed):
        return importlib.import_module(f"proofs_check.{module}").check(profile=profile, seed=seed)

    return run


def _semantic(name: str) -> Callable:
    def run(profile, seed):
        from .semantics import CHECKS as SEM

        return SEM[name](profile=profile, seed=seed)

    return run


# name -> (runner, kind, components it exercises)
CHECKS: dict[str, tuple[Callable, str, frozenset[str]]] = {
    "T1": (_claim("t1_lagrangian"), "identity", frozenset({"rules", "decay"})),
    "C-a": (_claim("ca_switching"), "identity", frozenset({"rules", "decay"})),
    "C-c": (_claim("cc_small_steps"), "identity", frozenset({"rules"})),
    "telescoping": (_claim("telescoping"), "identity", frozenset({"rules", "decay"})),
    "C-b": (_claim("cb_dual_decrease"), "inequality", frozenset({"rules", "decay"})),
    "T2": (_claim("t2_preference"), "inequality", frozenset({"rules", "decay"})),
    "T3": (_claim("t3_balancing"), "inequality", frozenset({"rules"})),
    "strong-convexity": (_claim("strong_convexity"), "statistical", frozenset()),
    "log-regret": (_claim("log_regret"), "statistical", frozenset({"rules", "decay", "simulator"})),
    "causality": (_semantic("causality"), "inequality", frozenset({"rules", "simulator"})),
    "gates": (_semantic("gates"), "inequality", frozenset({"router"})),
    "selection": (_semantic("selection"), "inequality", frozenset({"router"})),
    "group-mask": (_semantic("group-mask"), "inequality", frozenset({"router"})),
    "counting": (_semantic("counting"), "inequality", frozenset({"router", "balancer", "rules"})),
}


def _outcome(runner, profile, seed) -> str:
    try:
        return "missed" if runner(profile, seed).passed else "caught"
    except Exception:  # a crash under a mutant is a detection too
        return "raised"


def run_matrix(profile: str = "mutants", seed: int = 0,
               mutants=MUTANTS, checks=None) -> dict[str, dict[str, str]]:  # fmt: skip
    """``{mutant: {check: "caught" | "raised" | "missed" | "-"}}``; ``"none"`` is the baseline."""
    checks = checks or CHECKS
    out: dict[str, dict[str, str]] = {"none": {}}
    for name, (runner, _, _) in checks.items():
        out["none"][name] = _outcome(runner, profile, seed)
    for m in mutants:
        row = {}
        for name, (runner, _, touches) in checks.items():
            if not (touches & m.touches):
                row[name] = "-"
                continue
            with m.patch():
                row[name] = _outcome(runner, profile, seed)
        out[m.name] = row
    return out


def uncaught(matrix: dict[str, dict[str, str]], checks=None) -> list[str]:
    """Mutants that no non-identity check catches (and a baseline that fails, as ``none:<check>``)."""
    checks = checks or CHECKS
    bad = [f"none:{c}" for c, v in matrix["none"].items() if v != "missed"]
    for mutant, row in matrix.items():
        if mutant == "none":
            continue
        if not any(v in ("caught", "raised") and checks[c][1] != "identity" for c, v in row.items()):
            bad.append(mutant)
    return bad


def format_matrix(matrix: dict[str, dict[str, str]], checks=None) -> str:
    """Rows: mutants; columns: checks (identities marked ``*``). ``X`` caught, ``!`` raised,
    ``.`` missed (passes under the mutant), ``-`` not exercised; the baseline row ``none``
    must read ``.`` everywhere."""
    checks = checks or CHECKS
    cols = list(next(iter(matrix.values())))
    heads = [c + ("*" if checks[c][1] == "identity" else "") for c in cols]
    width = max(len(m) for m in matrix)
    sym = {"caught": "X", "raised": "!", "missed": ".", "-": "-"}
    lines = [" " * width + "  " + "  ".join(heads)]
    for mutant, row in matrix.items():
        cells = [sym[row[c]].center(len(h)) for c, h in zip(cols, heads)]
        lines.append(mutant.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines)


def main(profile: str = "mutants", seed: int = 0) -> int:
    t0 = time.perf_counter()
    matrix = run_matrix(profile, seed)
    print(format_matrix(matrix))
    bad = uncaught(matrix)
    print("\nX caught, ! raised, . missed, - not exercised; * identity (consistency) checks, "
          "which do not count as catching.")  # fmt: skip
    print(f"{len(MUTANTS)} mutants, {len(CHECKS)} checks, profile {profile}, "
          f"{time.perf_counter() - t0:.1f} s: "
          + (f"NOT CAUGHT by any non-identity check: {', '.join(bad)}" if bad
             else "every mutant is caught by a non-identity check"))  # fmt: skip
    return 1 if bad else 0


@contextlib.contextmanager
def applied(name: str) -> Iterator[None]:
    """``with applied("reversed-sign"): ...`` runs code under one mutant."""
    for m in MUTANTS:
        if m.name == name:
            with m.patch():
                yield
            return
    raise ValueError(f"unknown mutant {name!r}")
