r"""Shared machinery of the claim checks: results, profiles, instances, trajectories.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token, ``N`` iterations.

Deterministic setting of docs/theory.md section 4: one fixed score matrix ``gamma``; for
``n = 0, 1, ...``

.. math::

    x^n = \operatorname{TopK}(\gamma + p^n), \qquad A^n = \textstyle\sum_i x^n_{i\cdot},
    \qquad p^{n+1} = p^n + \varepsilon^n \odot (c - A^n),

with the lowest-index tie-break of :func:`alflb.route_topk` and ``eps^n`` the
``step_E`` that the rule reports. Sign convention: the router adds the bias; an
overloaded expert's bias goes down.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alflb.problem import rounded_capacity
from alflb.routing import expert_load, route_topk, routing_margin, topk_sum
from alflb.rules import RuleUpdate, SignRule, UpdateRule, make_rule

__all__ = [
    "KINDS",
    "PROFILES",
    "ClaimResult",
    "FlippedSignRule",
    "Instance",
    "Profile",
    "Trajectory",
    "dual_value",
    "lagrangian_value",
    "negative_steps",
    "random_instance",
    "random_rule",
    "run_trajectory",
    "summarise",
    "table_header",
    "table_row",
]


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ClaimResult:
    """The outcome of one claim's check.

    ``kind`` says what a pass is evidence of:

    - ``identity``: an algebraic identity that holds for *any* step ``eps`` (of either
      sign) once a rule reports the step it took. A pass shows that the implementation is
      consistent (routing, loads, the dual and the reported steps agree); it is not
      evidence that the rule is right. Identity checks also assert ``eps >= 0``.
    - ``inequality``: a bound that a wrong rule or router can violate (it uses
      ``eps >= 0``, the direction of the update, or a property of the router).
    - ``statistical``: a measured rate, modulus or growth with a stated margin.

    ``worst`` is the largest value of ``measure`` seen (``residual`` of an identity,
    ``violation`` of an inequality, positive = violated, ``z-score``, ``ratio``...);
    ``passed`` is ``worst <= tolerance`` for identities and inequalities, and the claim's
    own criterion for statistical ones; ``verdict`` is one line for the table.
    """

    claim: str
    statement: str
    n_instances: int
    worst: float
    tolerance: float
    passed: bool
    verdict: str
    kind: str = "identity"  # one of KINDS
    details: dict[str, Any] = field(default_factory=dict)
    measure: str = "residual"  # what ``worst`` measures (the table's "worst" column)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")


KINDS = ("identity", "inequality", "statistical")


@dataclass(frozen=True)
class Profile:
    """How many instances a check tries."""

    name: str
    n_instances: int  # deterministic trajectories for T1, C-a..C-c, telescoping, T2
    n_steps: int  # iterations per trajectory
    mc_samples: int  # Monte Carlo tokens for strong convexity
    regret_seeds: int  # seeds for logarithmic regret
    regret_horizons: tuple[int, ...]


PROFILES = {
    "fast": Profile("fast", n_instances=150, n_steps=12, mc_samples=200_000, regret_seeds=6,
                    regret_horizons=tuple(2**j for j in range(4, 11))),
    # small instances for the mutation suite (every check under every mutant)
    "mutants": Profile("mutants", n_instances=40, n_steps=10, mc_samples=20_000, regret_seeds=6,
                       regret_horizons=tuple(2**j for j in range(4, 11))),
    "thorough": Profile("thorough", n_instances=3000, n_steps=25, mc_samples=2_000_000,
                        regret_seeds=16, regret_horizons=tuple(2**j for j in range(4, 15))),
}  # fmt: skip


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[profile]


def summarise(
    claim: str,
    statement: str,
    values: Sequence[float],
    tolerance: float,
    kind: str,
    n_instances: int,
    **details: Any,
) -> ClaimResult:
    """A :class:`ClaimResult` that passes iff every value <= tolerance.

    An identity that passes is reported ``consistent`` (it cannot fail for a wrong rule
    that reports its step); an inequality ``holds``.
    """
    worst = float(np.max(values)) if len(values) else 0.0
    passed = worst <= tolerance and n_instances > 0
    ok = "consistent" if kind == "identity" else "holds"
    verdict = ok if passed else f"VIOLATED ({sum(v > tolerance for v in values)} cases)"
    measure = "residual" if kind == "identity" else "violation"
    return ClaimResult(
        claim, statement, n_instances, worst, tolerance, passed, verdict, kind, details, measure
    )


def negative_steps(traj: Trajectory) -> list[float]:
    """``max(0, -min_k eps_k^n)`` per step: every rule of the family has ``eps >= 0``.

    The identities hold for steps of either sign; this is the part of an identity check
    that a consistently reversed rule (which reports its negative step) fails.
    """
    return [max(0.0, -float(np.min(s))) for s in traj.step_NE]


# --------------------------------------------------------------------------- instances
@dataclass(frozen=True)
class Instance:
    """A fixed-score problem: ``gamma`` (T, E), ``k``, integer capacities ``c`` summing to K*T."""

    scores_TE: np.ndarray
    k: int
    capacity_E: np.ndarray
    family: str


def random_instance(rng: np.random.Generator, family: str | None = None) -> Instance:
    """Draw an instance from one of the families (random when ``family`` is None).

    Families: ``gaussian`` (continuous, no ties almost surely), ``expert_bias``
    (gaussian plus a per-expert offset: strongly unbalanced at ``p = 0``), ``grid``
    (scores on a coarse grid: many exact ties), ``duplicate`` (groups of identical
    tokens), ``degenerate`` (constant columns or all-equal rows mixed in), ``sigmoid``.
    Capacities are balanced when ``K*T/E`` is an integer, floor/ceil otherwise, and
    random (summing to ``K*T``, each ``<= T``) for a quarter of the draws.
    """
    families = ("gaussian", "expert_bias", "grid", "duplicate", "degenerate", "sigmoid")
    family = family or families[rng.integers(len(families))]
    n_experts = int(rng.integers(2, 11))
    k = int(rng.integers(1, n_experts))
    n_tokens = int(rng.integers(2, 49))
    if family == "gaussian":
        scores = rng.normal(size=(n_tokens, n_experts))
    elif family == "expert_bias":
        scores = rng.normal(size=(n_tokens, n_experts)) + 2.0 * rng.normal(size=n_experts)
    elif family == "grid":
        scores = np.round(rng.normal(size=(n_tokens, n_experts)) * 2) / 4
    elif family == "duplicate":
        base = rng.normal(size=(int(rng.integers(1, 5)), n_experts))
        scores = base[rng.integers(len(base), size=n_tokens)]
    elif family == "degenerate":
        scores = rng.normal(size=(n_tokens, n_experts))
        scores[:, rng.integers(n_experts)] = 0.5
        scores[rng.random(n_tokens) < 0.3] = 0.0
    elif family == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-rng.normal(size=(n_tokens, n_experts)) * 2))
    else:
        raise ValueError(f"unknown instance family {family!r}")
    if rng.random() < 0.25:
        cap = _random_capacity(rng, n_tokens, n_experts, k)
    else:
        cap = rounded_capacity(n_tokens, n_experts, k)
    return Instance(np.ascontiguousarray(scores, dtype=np.float64), k, cap, family)


def _random_capacity(rng: np.random.Generator, n_tokens: int, n_experts: int, k: int) -> np.ndarray:
    cap = np.zeros(n_experts, dtype=np.int64)
    for _ in range(k * n_tokens):
        free = np.flatnonzero(cap < n_tokens)
        cap[free[rng.integers(len(free))]] += 1
    return cap


def random_rule(rng: np.random.Generator, instance: Instance) -> UpdateRule:
    """A rule with a reported ``step_E`` and steps on the scale of the scores.

    Sign, centred, uniform (normalised or raw), per-expert and decaying steps, with step
    sizes log-uniform over three decades so that both the small-step and the switching
    regimes occur.
    """
    spread = float(np.ptp(instance.scores_TE)) or 1.0
    mean_load = float(instance.capacity_E.mean()) or 1.0
    u = spread * 10 ** rng.uniform(-3, 0)
    choice = rng.integers(6)
    if choice == 0:
        return make_rule("sign", u=u)
    if choice == 1:
        return make_rule("centred", u=u)
    if choice == 2:
        return make_rule("uniform", eps=u)
    if choice == 3:
        return make_rule("uniform", eps=u / mean_load, normalize=False)
    if choice == 4:
        n_experts = instance.capacity_E.shape[0]
        return make_rule("per_expert", eps_E=u / mean_load * rng.uniform(0, 2, n_experts))
    return make_rule("decay", a=u * 3, n0=3.0)


@dataclass(frozen=True)
class FlippedSignRule(SignRule):
    """A deliberately wrong rule for fault injection: it moves ``p -= u sign(c - A)``
    (an overloaded expert's bias goes *up*) yet reports the sign rule's ``step_E``.

    The checks must flag it (T1 residual, C-b and T2 violations).
    """

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        right = super()._update(bias_E, load_E, capacity_E, state, scores_TE)
        return RuleUpdate(2 * bias_E - right.bias_E, right.state, right.step_E)


# --------------------------------------------------------------------------- trajectories
def dual_value(scores_TE: np.ndarray, k: int, capacity_E: np.ndarray, bias_E: np.ndarray) -> float:
    """``g(p) = sum_i TopKSum(gamma_i + p) - c . p`` (float64)."""
    return float(topk_sum(scores_TE + bias_E, k).sum() - capacity_E @ bias_E)


def lagrangian_value(scores_TE, assignment_TE, capacity_E, bias_E) -> float:
    """``Lag(x, p) = sum (gamma + p) x - c . p`` (float64)."""
    return float(np.sum((scores_TE + bias_E) * assignment_TE) - capacity_E @ bias_E)


@dataclass(frozen=True)
class Trajectory:
    """``N+1`` biases/assignments and ``N`` steps of a deterministic run.

    ``bias_NE[n] = p^n``, ``assign_NTE[n] = x^n``, ``load_NE[n] = A^n`` for
    ``n = 0..N``; ``step_NE[n] = eps^n`` and ``delta_NE[n] = p^{n+1} - p^n`` for
    ``n = 0..N-1``; ``margin_NT[n]`` is each token's K-th/(K+1)-th gap at ``p^n``.
    """

    instance: Instance
    rule_name: str
    bias_NE: np.ndarray
    assign_NTE: np.ndarray
    load_NE: np.ndarray
    step_NE: np.ndarray
    delta_NE: np.ndarray
    margin_NT: np.ndarray
    dual_N: np.ndarray


def run_trajectory(
    instance: Instance,
    rule: UpdateRule,
    n_steps: int,
    bias0_E: np.ndarray | None = None,
) -> Trajectory:
    """Iterate ``rule`` on the fixed scores for ``n_steps`` updates (numpy, float64)."""
    gamma, k, cap = instance.scores_TE, instance.k, instance.capacity_E.astype(np.float64)
    n_experts = gamma.shape[1]
    p = rule.initial_bias(n_experts) if bias0_E is None else np.asarray(bias0_E, dtype=np.float64)
    state = rule.init_state(n_experts)
    biases, assigns, loads, steps, deltas, margins, duals = [], [], [], [], [], [], []
    for n in range(n_steps + 1):
        x = route_topk(gamma, p, k)
        a = expert_load(x)
        biases.append(p)
        assigns.append(x)
        loads.append(a)
        margins.append(routing_margin(gamma, p, k))
        duals.append(dual_value(gamma, k, cap, p))
        if n == n_steps:
            break
        out = rule.update(p, a, cap, state, scores_TE=gamma)
        if out.step_E is None:
            raise ValueError(f"rule {rule.name!r} reports no step_E: the identities need eps")
        steps.append(np.asarray(out.step_E, dtype=np.float64))
        deltas.append(out.bias_E - p)
        p, state = out.bias_E, out.state
    return Trajectory(
        instance,
        rule.name,
        np.array(biases),
        np.array(assigns),
        np.array(loads, dtype=np.float64),
        np.array(steps).reshape(n_steps, n_experts),
        np.array(deltas).reshape(n_steps, n_experts),
        np.array(margins),
        np.array(duals),
    )


def trajectories(
    profile: Profile,
    seed: int,
    rules: Callable[[np.random.Generator, Instance], UpdateRule] | None = None,
    n_instances: int | None = None,
):
    """Yield seeded trajectories: random instances, random rules, random starting biases."""
    rng = np.random.default_rng(seed)
    rules = rules or random_rule
    for _ in range(n_instances or profile.n_instances):
        inst = random_instance(rng)
        rule = rules(rng, inst)
        n_experts = inst.capacity_E.shape[0]
        bias0 = None
        if rng.random() < 0.5 and rule.name != "multiplicative":
            bias0 = rng.normal(size=n_experts) * float(np.ptp(inst.scores_TE) or 1.0) * 0.3
            if inst.family == "grid":
                bias0 = np.round(bias0 * 4) / 4  # keep the ties exact
        yield run_trajectory(inst, rule, profile.n_steps, bias0)


def scale_of(*terms: float) -> float:
    """``1 + sum |terms|``: the magnitude a residual is measured against."""
    return 1.0 + sum(abs(t) for t in terms)


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# --------------------------------------------------------------------------- reporting
def format_table(results: Sequence[ClaimResult]) -> str:
    """A plain-text table: claim, kind, statement, instances, worst (with what it measures),
    tolerance, verdict."""
    rows = [table_header()] + [table_row(r) for r in results]
    ncol = len(rows[0])
    widths = [max(len(row[j]) for row in rows) for j in range(ncol)]
    widths[2] = min(widths[2], 56)  # statements wrap at word boundaries, never cut
    lines = []
    for idx, row in enumerate(rows):
        wrapped = textwrap.wrap(row[2], widths[2], break_long_words=False) or [""]
        for n, part in enumerate(wrapped):
            cells = [c if n == 0 else "" for c in row]
            cells[2] = part
            text = "  ".join(cells[j].ljust(widths[j]) if j < ncol - 1 else cells[j]
                             for j in range(ncol))
            lines.append(text.rstrip())
        if idx == 0:
            lines.append("  ".join("-" * w for w in widths[:-1]) + "  " + "-" * 7)
    return "\n".join(lines)


def table_header() -> tuple[str, ...]:
    return ("claim", "kind", "statement", "instances", "worst", "tol", "verdict")


def table_row(r: ClaimResult) -> tuple[str, ...]:
    """One row of the claims table (the data the README and the demo are built from)."""
    return (r.claim, r.kind, r.statement, str(r.n_instances), f"{r.worst:.3g} {r.measure}",
            f"{r.tolerance:.2g}", r.verdict)  # fmt: skip


def main_for(check: Callable[..., ClaimResult], argv: Sequence[str] | None = None) -> int:
    """``python -m proofs_check.<module> [--profile fast|thorough] [--seed N]``."""
    import argparse

    parser = argparse.ArgumentParser(description=(check.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fast")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = check(profile=args.profile, seed=args.seed)
    print(format_table([result]))
    for key, value in result.details.items():
        print(f"  {key}: {value}")
    return 0 if result.passed else 1
