"""Differential tests: alflb under ``semantics="torchtitan"`` against torchtitan 0.3.0 itself.

The router is torchtitan's ``TokenChoiceTopKRouter`` (node-limited groups, ``route_norm``,
``route_scale``); the bias update is the optimizer pre-step hook that
``register_moe_load_balancing_hook`` installs, run on a stand-in model part holding
torchtitan-shaped MoE buffers. Each comparison has a mutant that must fail. CPU only;
skipped with the reason when torchtitan is absent (the optional extra ``ref``).
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from _reference import as_map, dense_gates, import_torchtitan_moe, make_router, route, tied_logits
from torch import nn

from alflb.model import BalanceConfig, DeepSeekMoE, ModelConfig
from alflb.model.balancing import Balancer
from alflb.semantics import get_semantics

tt_moe, tt_linear, tt_optimizer = import_torchtitan_moe()
TORCHTITAN = get_semantics("torchtitan")


def titan_router(E, K, *, groups=None, limited=None, route_norm=True, scale=1.0):
    cfg = tt_moe.TokenChoiceTopKRouter.Config(
        num_experts=E, gate=tt_linear.Linear.Config(in_features=E, out_features=E),
        num_expert_groups=groups, num_limited_groups=limited, top_k=K, score_func="sigmoid",
        route_norm=route_norm, route_scale=scale,
    )
    router = cfg.build()
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(E))
    return router


@pytest.mark.parametrize("K,norm", [(6, True), (1, True), (4, False)])
def test_grouped_routing_and_gates_equal_torchtitan(K, norm):
    rng = np.random.default_rng(K)
    T, E, G, Gk = 256, 64, 8, 2
    logits = tied_logits(rng, T, E)
    bias = torch.tensor(np.round(rng.normal(size=E) * 16) / 64, dtype=torch.float32)
    gates_BLK, ids_BLK, _ = titan_router(E, K, groups=G, limited=Gk, route_norm=norm, scale=2.5)(logits[None], bias)
    ref_map = as_map(ids_BLK[0], E)
    ours = route(make_router(E, K, semantics="torchtitan", n_groups=G, topk_groups=Gk, route_scale=2.5,
                             normalize_gates=norm), logits, bias)
    torch.testing.assert_close(as_map(ours.topk_TK, E), ref_map, rtol=0, atol=0)
    # torchtitan's top-K is unsorted, so the normalising sum adds the same K gates in another
    # order: equal up to 2 ulp (3e-7 relative), not bit for bit.
    torch.testing.assert_close(dense_gates(ours.topk_TK, ours.gates_TK.detach(), E),
                               dense_gates(ids_BLK[0], gates_BLK[0].detach(), E), rtol=3e-7, atol=0)
    if K == 6:  # Mutation: Megatron's group score (top K // topk_groups = 3) routes differently.
        mutant = route(make_router(E, K, semantics=TORCHTITAN.replace(group_score="topk_per_group"), n_groups=G,
                                   topk_groups=Gk, route_scale=2.5), logits, bias)
        assert (as_map(mutant.topk_TK, E) != ref_map).any()
    if K == 1 and norm:  # Mutation: Megatron leaves a single gate unnormalised.
        mutant = route(make_router(E, K, semantics=TORCHTITAN.replace(normalise_top1=False), n_groups=G,
                                   topk_groups=Gk, route_scale=2.5), logits, bias)
        with pytest.raises(AssertionError):
            torch.testing.assert_close(mutant.gates_TK.detach(), gates_BLK[0].detach())


class _Block(nn.Module):
    """A transformer block as torchtitan's hook sees it: ``moe_enabled`` and ``moe``."""

    def __init__(self, E: int, coeff: float) -> None:
        super().__init__()
        self.moe_enabled = True
        self.moe = nn.Module()
        self.moe.load_balance_coeff = coeff
        self.moe.register_buffer("expert_bias_E", torch.zeros(E))
        self.moe.register_buffer("tokens_per_expert_E", torch.zeros(E))


def _titan_hook(E: int, coeff: float):
    part = nn.Module()
    part.layers = nn.ModuleDict({"0": _Block(E, coeff)})
    hooks = []
    optimizers = types.SimpleNamespace(register_step_pre_hook=hooks.append)
    dims = types.SimpleNamespace(get_optional_mesh=lambda name: None, ep_enabled=False, tp=1)
    tt_optimizer.register_moe_load_balancing_hook(optimizers, [part], dims)
    return part.layers["0"].moe, hooks[0]


def _model(semantics: str, E: int, K: int) -> DeepSeekMoE:
    cfg = ModelConfig(vocab_size=64, max_seq_len=32, n_layers=2, n_dense_layers=1, d_model=E, n_heads=2,
                      n_routed_experts=E, top_k=K, expert_hidden=8, semantics=semantics)
    return DeepSeekMoE(cfg).train()


def test_centred_sign_update_equals_torchtitans_pre_step_hook():
    rng = np.random.default_rng(11)
    E, K, T, u = 16, 4, 96, 1e-3
    titan, hook = _titan_hook(E, u)
    model = _model("torchtitan", E, K)
    balancer = Balancer(BalanceConfig(mode="sign", u=u), model)  # centred by the semantics
    balancer.init_biases(model)
    router = model.routers()[0]
    for _ in range(6):
        p = np.linspace(3, 1, E)
        loads = torch.tensor(rng.multinomial(K * T, p / p.sum()))
        loads[:2] = K * T // E  # ties with the mean
        loads[2] += K * T - int(loads.sum())
        titan.tokens_per_expert_E.copy_(loads.float())
        hook()
        router.load_count.copy_(loads)
        balancer.end_step(model)
        torch.testing.assert_close(router.expert_bias, titan.expert_bias_E, rtol=0, atol=0)
    # Mutation: without centring (Megatron's value) the bias drifts away from torchtitan's.
    mutant_model = _model("megatron", E, K)
    mutant = Balancer(BalanceConfig(mode="sign", u=u), mutant_model)
    mutant.init_biases(mutant_model)
    titan2, hook2 = _titan_hook(E, u)
    mutant_model.routers()[0].load_count.copy_(loads)
    titan2.tokens_per_expert_E.copy_(loads.float())
    hook2()
    mutant.end_step(mutant_model)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(mutant_model.routers()[0].expert_bias, titan2.expert_bias_E, rtol=0, atol=0)
