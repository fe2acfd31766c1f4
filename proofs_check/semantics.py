r"""Checks of the implementation rules that the claims take for granted.

The identities of the paper hold for whatever step a rule reports; these checks pin
down what the rules, the simulator and the model must *do* (the semantic rules of
section 3 and the pitfalls of the reference systems), each as a comparison that a
plausible bug fails (see :mod:`proofs_check.mutants`):

- ``causality`` — :func:`alflb.simulator.run_policy` routes batch ``n`` with a bias that
  depends only on batches ``< n`` (changing batches ``>= n`` leaves ``p^0..p^n``
  unchanged); its loads are top-K of ``gamma + p`` and its next bias is the pure rule's
  update with the balanced target ``c = K T / E``; the sign rule reduces imbalance.
- ``gates`` — the model's gate weights come from the unbiased scores: with any bias, the
  gates equal the unbiased scores of the selected experts (normalised, times the route
  scale).
- ``selection`` — the model's router selects top-K of ``scores + bias`` (the same set as
  :func:`alflb.routing.route_topk`), so raising an expert's bias never lowers its load.
- ``group-mask`` — group-limited routing is shift-invariant: adding a negative constant
  to every bias leaves the selection unchanged (masked groups must be ``-inf``, never 0).
- ``counting`` — loads are counted in training mode only (none in ``eval()``, under
  ``inference_mode``, or when activation checkpointing recomputes a forward), summed over every micro-batch of an optimiser step, and the balancer's
  update equals the pure rule applied to those global loads.

Each returns a :class:`ClaimResult` of kind ``inequality``: ``worst`` is the largest
violation (an absolute difference, or a count), tolerance ``1e-6``.
"""

from __future__ import annotations

import numpy as np

from alflb.routing import expert_load, route_topk
from alflb.rules import make_rule

from ._common import ClaimResult, main_for

TOL = 1e-6
SEMANTIC_CHECKS = ("causality", "gates", "selection", "group-mask", "counting")  # = __init__.SEMANTIC_CHECKS


def _result(name: str, statement: str, n: int, parts: dict[str, float]) -> ClaimResult:
    worst = float(max(parts.values()))
    passed = worst <= TOL
    bad = [k for k, v in parts.items() if v > TOL]
    verdict = "holds" if passed else f"VIOLATED ({', '.join(bad)})"
    return ClaimResult(name, statement, n, worst, TOL, passed, verdict, "inequality",
                       {k: float(v) for k, v in parts.items()}, "violation")  # fmt: skip


# --------------------------------------------------------------------------- simulator
def _stream(rng: np.random.Generator, n_batches: int, n_tokens: int, n_experts: int) -> np.ndarray:
    offsets = np.linspace(0.8, -0.8, n_experts)
    return rng.normal(size=(n_batches, n_tokens, n_experts)) + offsets


def check_causality(profile="fast", seed: int = 0, rules=None) -> ClaimResult:
    """The simulator is causal, matches the pure rule with c = K T / E, and balances."""
    from alflb import simulator  # looked up at call time (a mutant may replace run_policy)

    rng = np.random.default_rng(seed + 1201)
    n_batches, n_tokens, n_experts, k = 60, 16, 4, 2
    cap = np.full(n_experts, k * n_tokens / n_experts)
    leak = replay = 0.0
    late_dev = []
    for u in (0.05, 0.2):
        rule = make_rule("sign", u=u)
        scores = _stream(rng, n_batches, n_tokens, n_experts)
        run = simulator.run_policy(rule, scores, k)
        for n in (0, n_batches // 2, n_batches - 1):
            changed = scores.copy()
            changed[n:] = rng.normal(size=changed[n:].shape) * 3
            other = simulator.run_policy(rule, changed, k)
            leak = max(leak, float(np.abs(other.bias_NE[: n + 1] - run.bias_NE[: n + 1]).max()))
        state = rule.init_state(n_experts)
        for n in range(n_batches):
            bias = np.asarray(run.bias_NE[n], dtype=np.float64)
            load = expert_load(route_topk(scores[n], bias, k))
            replay = max(replay, float(np.abs(load - run.load_NE[n]).max()))
            out = rule.update(bias, load, cap, state)
            state = out.state
            if n + 1 < n_batches:
                replay = max(replay, float(np.abs(out.bias_E - run.bias_NE[n + 1]).max()))
        dev = np.abs(np.asarray(run.load_NE, dtype=np.float64) - cap).max(axis=1) / cap[0]
        late_dev.append(float(dev[-n_batches // 3:].mean()) / max(float(dev[:3].mean()), 1e-12))
    parts = {"bias_depends_on_current_or_later_batch": leak, "differs_from_pure_rule": replay,
             # the sign rule must remove at least half of the initial imbalance
             "late_over_early_imbalance_above_half": max(0.0, min(late_dev) - 0.5)}  # fmt: skip
    return _result("causality", "run_policy: p^n sees batches < n; = route_topk + rule(c=KT/E); "
                   "imbalance falls", 2 * n_batches, parts)  # fmt: skip


# --------------------------------------------------------------------------- model
def _router(n_groups: int = 1, topk_groups: int = 1, seed: int = 0):
    import torch

    from alflb.model.config import ModelConfig
    from alflb.model.transformer import Router

    cfg = ModelConfig(d_model=16, n_heads=2, n_routed_experts=8, top_k=2, n_groups=n_groups,
                      topk_groups=topk_groups, route_scale=2.5)  # fmt: skip
    torch.manual_seed(seed)
    router = Router(cfg)
    torch.nn.init.normal_(router.weight, std=0.5)
    return router


def _x(n_tokens: int, seed: int):
    import torch

    return torch.randn(n_tokens, 16, generator=torch.Generator().manual_seed(seed))


def check_gates(profile="fast", seed: int = 0, rules=None) -> ClaimResult:
    """Gate weights use the unbiased scores, whatever the bias."""
    import torch

    worst, n = 0.0, 0
    for trial in range(4):
        router = _router(seed=seed + trial)
        x = _x(64, seed + trial)
        with torch.no_grad():
            router.expert_bias.copy_(torch.randn(8, generator=torch.Generator().manual_seed(trial)))
            out = router(x)
            scores = torch.sigmoid(x @ router.weight.T)  # (T, E) unbiased
            g = scores.gather(1, out.topk_TK)
            g = g / g.sum(-1, keepdim=True) * router.route_scale
        worst = max(worst, float((out.gates_TK - g).abs().max()))
        n += 1
    return _result("gates", "gates = normalised unbiased scores of the selected experts",
                   n, {"gates_differ_from_unbiased": worst})  # fmt: skip


def check_selection(profile="fast", seed: int = 0, rules=None) -> ClaimResult:
    """The router selects top-K of scores + bias; raising a bias never lowers a load."""
    import torch

    mismatch, monotone, n = 0.0, 0.0, 0
    for trial in range(4):
        router = _router(seed=seed + trial)
        x = _x(128, seed + 10 + trial)
        bias = np.random.default_rng(seed + trial).normal(size=8) * 0.2
        with torch.no_grad():
            router.expert_bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
            out = router(x)
            scores = torch.sigmoid(x @ router.weight.T).double().numpy()
        mask = np.zeros((128, 8), dtype=bool)
        np.put_along_axis(mask, out.topk_TK.numpy(), True, axis=1)
        ref = route_topk(scores, bias.astype(np.float32).astype(np.float64), 2)
        mismatch = max(mismatch, float(np.sum(mask != ref)) / 2)
        load0 = np.bincount(out.topk_TK.reshape(-1).numpy(), minlength=8)
        for e in range(8):
            with torch.no_grad():
                router.expert_bias[e] += 0.1
                load1 = np.bincount(router(x).topk_TK.reshape(-1).numpy(), minlength=8)
                router.expert_bias[e] -= 0.1
            monotone = max(monotone, float(load0[e] - load1[e]))
        n += 1
    return _result("selection", "router selects top-K(scores + bias); bias up => load not down",
                   n, {"tokens_differing_from_route_topk": mismatch,
                       "load_drop_after_bias_raise": monotone})  # fmt: skip


def check_group_mask(profile="fast", seed: int = 0, rules=None) -> ClaimResult:
    """Group-limited selection is unchanged when every bias shifts by a negative constant."""
    import torch

    changed, n = 0.0, 0
    for trial in range(4):
        router = _router(n_groups=4, topk_groups=2, seed=seed + trial)
        x = _x(128, seed + 20 + trial)
        bias = torch.as_tensor(np.random.default_rng(trial).normal(size=8) * 0.1, dtype=torch.float32)
        with torch.no_grad():
            sets = []
            for shift in (0.0, -3.0, 2.0):
                router.expert_bias.copy_(bias + shift)
                sets.append(torch.sort(router(x).topk_TK, dim=1).values)
        changed = max(changed, float(sum(int((s != sets[0]).any(dim=1).sum()) for s in sets[1:])))
        n += 1
    return _result("group-mask", "group-limited top-K invariant under bias + t (t < 0 too)",
                   n, {"tokens_whose_selection_changes": changed})  # fmt: skip


def check_counting(profile="fast", seed: int = 0, rules=None) -> ClaimResult:
    """Counting: training only; summed over micro-batches; the update uses global loads."""
    import torch

    from alflb.model.balancing import BalanceConfig, Balancer
    from alflb.model.config import ModelConfig
    from alflb.model.transformer import DeepSeekMoE

    cfg = ModelConfig(vocab_size=32, max_seq_len=16, n_layers=2, n_dense_layers=1, d_model=16,
                      n_heads=2, n_routed_experts=8, top_k=2, expert_hidden=8)  # fmt: skip
    torch.manual_seed(seed)
    model = DeepSeekMoE(cfg)
    balancer = Balancer(BalanceConfig(mode="sign", u=0.01), model)
    balancer.init_biases(model)
    gen = torch.Generator().manual_seed(seed)
    idx = [torch.randint(0, 32, (2, 16), generator=gen) for _ in range(3)]
    # evaluation and inference passes count nothing
    model.eval()
    with torch.no_grad():
        model(idx[0])
    model.train()
    with torch.inference_mode():
        model(idx[0])
    eval_counted = float(model.loads().abs().sum())
    # a checkpointed forward counts once: its recomputation during backward is no forward
    from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

    with set_checkpoint_early_stop(False):
        logits = checkpoint(lambda x: model(x).logits, idx[0], use_reentrant=False)
        logits.float().sum().backward()
    recount = float((model.loads().sum() - idx[0].numel() * cfg.top_k).abs())
    for router in model.routers():
        router.reset_load_count()
    # one optimiser step over three micro-batches
    balancer.begin_step(model)
    expected = torch.zeros(1, 8, dtype=torch.int64)
    for mb in idx:
        out = model(mb)
        expected[0] += torch.bincount(out.routing[0].topk_TK.reshape(-1), minlength=8)
    bias_before = model.routers()[0].expert_bias.clone().double().numpy()
    loads = balancer.end_step(model)
    miscount = float((loads.cpu() - expected).abs().sum())
    n_tokens = int(expected.sum()) // cfg.top_k
    cap = np.full(8, cfg.top_k * n_tokens / 8)
    want = make_rule("sign", u=0.01).update(bias_before, expected[0].double().numpy(), cap).bias_E
    got = model.routers()[0].expert_bias.double().numpy()
    return _result("counting", "loads counted in training only, over all micro-batches; "
                   "update = rule(global loads)", 3,
                   {"tokens_counted_in_eval_or_inference": eval_counted,
                    "recomputation_miscount": recount,
                    "global_load_miscount": miscount,
                    "update_differs_from_rule": float(np.abs(got - want).max())})  # fmt: skip


CHECKS = {
    "causality": check_causality,
    "gates": check_gates,
    "selection": check_selection,
    "group-mask": check_group_mask,
    "counting": check_counting,
}


def test_semantics():
    for name, check in CHECKS.items():
        result = check()
        assert result.passed, (name, result)


if __name__ == "__main__":
    import sys

    sys.exit(max(main_for(c, []) for c in CHECKS.values()))
