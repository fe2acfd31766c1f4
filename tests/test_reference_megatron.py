"""Differential tests: alflb under ``semantics="megatron"`` against megatron-core 0.16.1 itself.

Each comparison calls megatron-core's own functions (``moe_utils`` and the unbound
``TopKRouter._apply_*_loss`` methods with a stand-in ``self`` holding only what they
read), on random inputs with exact ties, skew, group limits and several micro-batches.
Each is followed by a mutation: the same comparison with one flag set to another
framework's value must fail, so the agreement is not vacuous. CPU only; skipped with the
reason when megatron-core is not installed (the optional extra ``ref``).
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from _reference import as_map, dense_gates, import_megatron_moe, make_router, route, tied_logits

from alflb.model import BalanceConfig, DeepSeekMoE, ModelConfig
from alflb.model.balancing import Balancer, sequence_aux_loss, switch_aux_loss
from alflb.semantics import get_semantics

moe_utils, mrouter = import_megatron_moe()
MEGATRON = get_semantics("megatron")


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    """One process, no torch.distributed: megatron's reductions over a group of size 1 are
    identities, but without an initialised process group its helper drops the group."""
    from megatron.core.tensor_parallel import mappings

    monkeypatch.setattr(mappings, "get_tensor_model_parallel_group_if_none", lambda group, **kw: group)


def megatron_route(logits, K, bias, n_groups=None, topk_groups=None, scale=None):
    probs_TE, map_TE = moe_utils.topk_routing_with_score_function(
        logits, K, num_groups=n_groups, group_topk=topk_groups, scaling_factor=scale,
        score_function="sigmoid", expert_bias=bias,
    )
    return probs_TE, map_TE


# ------------------------------------------------------------------------- routing


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_routing_and_gates_equal_megatron(seed):
    rng = np.random.default_rng(seed)
    T, E, K, G, Gk = 256, 64, 6, 8, 2  # Megatron's group score: top K // Gk = 3 of each group
    logits = tied_logits(rng, T, E)
    bias = torch.tensor(np.round(rng.normal(size=E) * 16) / 64, dtype=torch.float32)
    ref_probs, ref_map = megatron_route(logits, K, bias, G, Gk, scale=2.5)
    out = route(make_router(E, K, semantics="megatron", n_groups=G, topk_groups=Gk, route_scale=2.5), logits, bias)
    torch.testing.assert_close(as_map(out.topk_TK, E), ref_map, rtol=0, atol=0)
    torch.testing.assert_close(dense_gates(out.topk_TK, out.gates_TK.detach(), E), ref_probs, rtol=0, atol=0)
    # Mutation: the top-2 group score (alflb, torchtitan, transformers) routes differently.
    mutant = route(make_router(E, K, semantics=MEGATRON.replace(group_score="top2"), n_groups=G, topk_groups=Gk,
                               route_scale=2.5), logits, bias)
    assert (as_map(mutant.topk_TK, E) != ref_map).any(1).sum() > 0


def test_top1_gate_is_not_normalised_in_megatron():
    rng = np.random.default_rng(3)
    T, E = 128, 16
    logits = tied_logits(rng, T, E)
    bias = torch.tensor(rng.normal(size=E) / 8, dtype=torch.float32)
    ref_probs, ref_map = megatron_route(logits, 1, bias, scale=2.0)
    out = route(make_router(E, 1, semantics="megatron", route_scale=2.0), logits, bias)
    torch.testing.assert_close(as_map(out.topk_TK, E), ref_map, rtol=0, atol=0)
    torch.testing.assert_close(dense_gates(out.topk_TK, out.gates_TK.detach(), E), ref_probs, rtol=0, atol=0)
    mutant = route(make_router(E, 1, semantics=MEGATRON.replace(normalise_top1=True), route_scale=2.0), logits, bias)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(dense_gates(mutant.topk_TK, mutant.gates_TK.detach(), E), ref_probs)


def test_bf16_scores_are_rounded_before_the_bias_as_in_megatron():
    """megatron-core 0.16.1 casts sigmoid scores back to bf16 logits' dtype before the fp32 bias."""
    rng = np.random.default_rng(4)
    T, E, K = 512, 32, 4
    logits = torch.tensor(rng.normal(size=(T, E)) * 3, dtype=torch.float32).to(torch.bfloat16)
    # a bias on the scale of bf16's rounding of the scores, so the rounding decides selections
    bias = torch.tensor(rng.normal(size=E) * 2e-3, dtype=torch.float32)
    _, ref_map = megatron_route(logits, K, bias)
    out = route(make_router(E, K, semantics="megatron"), logits, bias)
    torch.testing.assert_close(as_map(out.topk_TK, E), ref_map, rtol=0, atol=0)
    mutant = route(make_router(E, K, semantics=MEGATRON.replace(score_dtype="fp32")), logits, bias)
    assert (as_map(mutant.topk_TK, E) != ref_map).any()


# ------------------------------------------------------------------ auxiliary losses


def _fake_router(E, K, kind, coeff=1.0):
    """The attributes megatron's ``TopKRouter._apply_*_loss`` read, and a capture of the loss."""
    group = types.SimpleNamespace(size=lambda: 1)
    self = types.SimpleNamespace(
        topk=K, config=types.SimpleNamespace(num_moe_experts=E, moe_router_fusion=False),
        tp_cp_group=group, tp_dp_cp_group=group, captured=[],
        global_tokens_per_expert=torch.zeros(E), ga_steps=torch.tensor(0.0),
    )
    self.get_aux_loss_coeff = lambda name: coeff if name == kind else 0.0

    def attach(activation, aux_loss_coeff, aux_loss, *args, **kwargs):
        self.captured.append(aux_loss)
        return activation

    self.attach_and_log_load_balancing_loss = attach
    return self


def _megatron_aux_inputs(logits, K):
    routing_map, scores = moe_utils.compute_routing_scores_for_aux_loss(logits, K, "sigmoid")
    return routing_map, scores


def _alflb_routing(logits, K, bias, semantics, B=1, G=1, Gk=1):
    E = logits.shape[1]
    return route(make_router(E, K, semantics=semantics, n_groups=G, topk_groups=Gk), logits, bias, batch_size=B)


@pytest.mark.parametrize("seed", [0, 1])
def test_switch_aux_loss_equals_megatron(seed):
    rng = np.random.default_rng(seed)
    T, E, K = 192, 16, 4
    logits = tied_logits(rng, T, E, skew=2.0)
    bias = torch.tensor(rng.normal(size=E), dtype=torch.float32)  # large: biased and unbiased top-K differ
    routing_map, scores = _megatron_aux_inputs(logits, K)
    me = _fake_router(E, K, "aux_loss")
    mrouter.TopKRouter._apply_aux_loss(me, scores, scores, routing_map)
    ours = switch_aux_loss(_alflb_routing(logits, K, bias, "megatron", G=4, Gk=2), semantics="megatron")
    torch.testing.assert_close(ours.detach(), me.captured[0], rtol=1e-6, atol=0)
    mutant = switch_aux_loss(_alflb_routing(logits, K, bias, "alflb", G=4, Gk=2), semantics="alflb")
    with pytest.raises(AssertionError):
        torch.testing.assert_close(mutant.detach(), me.captured[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_sequence_aux_loss_equals_megatron(seed):
    rng = np.random.default_rng(seed)
    B, S, E, K = 4, 48, 16, 4
    logits_BSE = tied_logits(rng, B * S, E, skew=2.0).view(B, S, E)
    bias = torch.tensor(rng.normal(size=E), dtype=torch.float32)
    # Megatron's tokens are sequence-major ([S, B] flattened); alflb's batch-major ([B, S]).
    logits_SB = logits_BSE.transpose(0, 1).reshape(S * B, E)
    routing_map, scores = _megatron_aux_inputs(logits_SB, K)
    me = _fake_router(E, K, "seq_aux_loss")
    mrouter.TopKRouter._apply_seq_aux_loss(me, scores, scores, routing_map, S, B)
    routing = _alflb_routing(logits_BSE.reshape(B * S, E), K, bias, "megatron", B=B)
    torch.testing.assert_close(sequence_aux_loss(routing, "megatron").detach(), me.captured[0], rtol=1e-6, atol=0)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(sequence_aux_loss(routing, "alflb").detach(), me.captured[0], rtol=1e-6, atol=0)


def _tiny_model(semantics, E=16, K=4):
    cfg = ModelConfig(vocab_size=64, max_seq_len=32, n_layers=2, n_dense_layers=1, d_model=E, n_heads=2,
                      n_routed_experts=E, top_k=K, expert_hidden=8, semantics=semantics)
    model = DeepSeekMoE(cfg)
    with torch.no_grad():
        model.routers()[0].weight.copy_(torch.eye(E))
    return model


@pytest.mark.parametrize("sizes", [(64, 64, 64), (96, 32, 160)])
def test_global_batch_aux_loss_equals_megatron_over_micro_batches(sizes):
    """Megatron divides the running count by the micro-batches so far and by the
    micro-batch's tokens (``router.py`` lines 392-399)."""
    rng = np.random.default_rng(5)
    E, K = 16, 4
    micro = [tied_logits(rng, T, E, 2.0) for T in sizes]
    me = _fake_router(E, K, "global_aux_loss")
    model = _tiny_model("megatron", E, K).train()
    balancer = Balancer(BalanceConfig(mode="global_aux", alpha=1.0), model)
    balancer.begin_step(model)
    for logits in micro:
        ours = balancer.loss([model.routers()[0](logits)], model).detach()
        routing_map, scores = _megatron_aux_inputs(logits, K)
        mrouter.TopKRouter._apply_global_aux_loss(me, scores, scores, routing_map)
        torch.testing.assert_close(ours, me.captured[-1], rtol=1e-6, atol=0)


def test_global_batch_divisor_mutation_fails_on_unequal_micro_batches():
    rng = np.random.default_rng(6)
    E, K = 16, 4
    me = _fake_router(E, K, "global_aux_loss")
    model = _tiny_model("megatron", E, K).train()
    balancer = Balancer(BalanceConfig(mode="global_aux", alpha=1.0), model)
    balancer.semantics = MEGATRON.replace(global_aux_divisor="tokens")  # the mutant
    balancer.begin_step(model)
    ours = []
    for T in (96, 32, 160):
        logits = tied_logits(rng, T, E, 2.0)
        ours.append(balancer.loss([model.routers()[0](logits)], model).detach())
        routing_map, scores = _megatron_aux_inputs(logits, K)
        mrouter.TopKRouter._apply_global_aux_loss(me, scores, scores, routing_map)
    torch.testing.assert_close(ours[0], me.captured[0], rtol=1e-6, atol=0)  # one micro-batch: equal
    with pytest.raises(AssertionError):
        torch.testing.assert_close(torch.stack(ours), torch.stack(me.captured), rtol=1e-6, atol=0)


# ------------------------------------------------------------------ the sign update


def test_sign_update_equals_megatron(monkeypatch):
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *a, **k: None)
    monkeypatch.setattr(moe_utils.parallel_state, "get_tensor_and_data_parallel_group", lambda **k: None)
    rng = np.random.default_rng(7)
    E, K = 16, 4
    model = _tiny_model("megatron", E, K).train()
    balancer = Balancer(BalanceConfig(mode="sign", u=1e-3), model)
    balancer.init_biases(model)
    router = model.routers()[0]
    bias = torch.zeros(E)
    for _ in range(5):
        loads = torch.tensor(rng.multinomial(K * 64, np.linspace(2, 1, E) / np.linspace(2, 1, E).sum()))
        loads[:3] = K * 64 // E  # exact ties with the mean: sign 0
        loads[3] += (K * 64 - int(loads.sum()))  # keep sum = K T
        ref = moe_utils.get_updated_expert_bias(loads.float(), bias, 1e-3)
        router.load_count.copy_(loads)
        balancer.end_step(model)
        torch.testing.assert_close(router.expert_bias, ref, rtol=0, atol=0)
        bias = ref
    # Mutation: centring (torchtitan's value) moves the bias differently.
    mutant_model = _tiny_model("torchtitan", E, K).train()
    mutant = Balancer(BalanceConfig(mode="sign", u=1e-3), mutant_model)
    mutant.init_biases(mutant_model)
    mutant_model.routers()[0].load_count.copy_(loads)
    mutant.end_step(mutant_model)
    ref = moe_utils.get_updated_expert_bias(loads.float(), torch.zeros(E), 1e-3)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(mutant_model.routers()[0].expert_bias, ref, rtol=0, atol=0)


# ------------------------------------------------------------------ quantile balancing


def _qb_dual_update():
    """megatron-core's quantile-balancing routing and column quantile, or skip (0.16.1 has none)."""
    fn = getattr(moe_utils, "qb_dual_update", None)
    if fn is None:
        pytest.skip("this megatron-core has no quantile balancing (qb_dual_update: core_v0.19.0 and later)")
    return fn


def _quantile_against_megatron(sizes, steps=3):
    """Route unequal micro-batches of raw logits with alflb's model and with ``qb_dual_update``
    from the same bias, then compare alflb's bias update with megatron-core's
    ``finalize_model_grads._update_router_qb_beta`` (mean of the micro-batches' column
    quantiles, EMA 0, centred), written out here for one data-parallel rank. ``p = -beta``."""
    qb = _qb_dual_update()
    rng = np.random.default_rng(9)
    E, K = 16, 4
    model = _tiny_model("megatron", E, K).train()
    balancer = Balancer(BalanceConfig(mode="quantile", rule_params={"k": K}), model)
    balancer.init_biases(model)
    router = model.routers()[0]
    for _ in range(steps):
        beta = -router.expert_bias.clone()
        balancer.begin_step(model)
        quantiles = []
        for T in sizes:  # continuous logits (no ties), skewed towards the low experts
            logits = torch.tensor(rng.normal(size=(T, E)) * 2 + np.linspace(2, 0, E), dtype=torch.float32)
            ours = router(logits)
            indices, beta_local = qb(logits, K, beta)
            torch.testing.assert_close(as_map(ours.topk_TK, E), as_map(indices, E), rtol=0, atol=0)
            balancer.loss([ours], model)
            quantiles.append(beta_local)
        mean = torch.stack(quantiles).sum(0) / len(quantiles)
        balancer.end_step(model)
        torch.testing.assert_close(router.expert_bias, -(mean - mean.mean()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sizes", [(64, 64), (16, 48, 96)])
def test_quantile_balancing_equals_megatrons_dual_update(sizes):
    _quantile_against_megatron(sizes)


def test_quantile_balancing_on_scores_is_not_megatrons(monkeypatch):
    """Mutation: the sweeps on the sigmoid scores (quantile_input="scores") disagree."""
    from alflb.semantics import SEMANTICS

    monkeypatch.setitem(SEMANTICS, "megatron", MEGATRON.replace(quantile_input="scores"))
    with pytest.raises(AssertionError):
        _quantile_against_megatron((16, 48, 96), steps=1)
