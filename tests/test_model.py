"""The DeepSeekMoE model: router semantics, fp32 bias, load counting, dispatch vs a slow oracle."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from alflb import route_topk
from alflb.errors import InvalidInputError, UnknownNameError
from alflb.model import DeepSeekMoE, ModelConfig, get_preset
from alflb.model.transformer import MoELayer, Router


def _cfg(**kw) -> ModelConfig:
    base = dict(d_model=32, n_heads=4, n_routed_experts=8, top_k=2, expert_hidden=16,
                n_shared_experts=1, max_seq_len=16)
    return ModelConfig(**{**base, **kw})


def _layer(seed: int = 0, **kw) -> MoELayer:
    torch.manual_seed(seed)
    layer = MoELayer(_cfg(**kw))
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    return layer


# ------------------------------------------------------------------ the bias buffer


def test_bias_is_a_persistent_fp32_buffer_never_a_parameter():
    model = DeepSeekMoE(get_preset("tiny"))
    names = {n for n, _ in model.named_parameters()}
    assert not any("expert_bias" in n for n in names)
    state = model.state_dict()
    bias_keys = [k for k in state if k.endswith("expert_bias")]
    assert len(bias_keys) == model.cfg.n_moe_layers
    assert all(state[k].dtype == torch.float32 for k in bias_keys)
    assert not any(k.endswith("load_count") for k in state)  # counters are not persistent


def test_bias_gets_no_gradient_and_stays_fp32_under_autocast():
    model = DeepSeekMoE(get_preset("tiny"))
    for r in model.routers():
        r.expert_bias.copy_(torch.linspace(-0.01, 0.01, r.n_experts))
    x = torch.randint(0, 256, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, x)
    assert out.logits.dtype == torch.bfloat16  # autocast is really on
    for r, routing in zip(model.routers(), out.routing):
        assert routing.scores_TE.dtype == torch.float32
        assert routing.gates_TK.dtype == torch.float32
        assert r.expert_bias.dtype == torch.float32
    out.loss.backward()
    for r in model.routers():
        assert r.expert_bias.grad is None and not r.expert_bias.requires_grad
        assert r.weight.grad is not None


@pytest.mark.parametrize("cast", [lambda m: m.to(torch.bfloat16), lambda m: m.half(),
                                  lambda m: m.double(), lambda m: m.to("cpu", torch.bfloat16)])
def test_model_casts_never_touch_the_bias(cast):
    model = DeepSeekMoE(get_preset("tiny"))
    # values that bf16 cannot hold: a cast and back would change them
    values = torch.tensor([1e-3 * k + 0.1234567 for k in range(8)], dtype=torch.float32)
    for r in model.routers():
        r.expert_bias.copy_(values)
    cast(model)
    assert model.embed.weight.dtype != torch.float32  # the cast happened
    for r in model.routers():
        assert r.expert_bias.dtype == torch.float32
        torch.testing.assert_close(r.expert_bias, values, rtol=0, atol=0)


def test_bias_survives_state_dict_round_trip_from_a_bf16_model():
    a = DeepSeekMoE(get_preset("tiny"))
    for r in a.routers():
        r.expert_bias.copy_(torch.full((8,), 0.1234567))
    a.to(torch.bfloat16)
    b = DeepSeekMoE(get_preset("tiny"))
    b.load_state_dict(a.state_dict())
    for r in b.routers():
        assert r.expert_bias.dtype == torch.float32
        torch.testing.assert_close(r.expert_bias, torch.full((8,), 0.1234567), rtol=0, atol=0)


# ------------------------------------------------------------------ router semantics


def test_gates_ignore_the_bias_and_selection_follows_it():
    torch.manual_seed(0)
    router = Router(_cfg())
    torch.nn.init.normal_(router.weight, std=0.5)
    x = torch.randn(64, 32)
    base = router(x)
    # a tiny bias that changes no selection leaves the gates bit-identical
    router.expert_bias.copy_(torch.full((8,), 1e-7) * torch.arange(8))
    same = router(x)
    assert torch.equal(same.topk_TK, base.topk_TK)
    assert torch.equal(same.gates_TK, base.gates_TK)
    # a large bias on expert 0 puts it in every selection ...
    router.expert_bias.zero_()
    router.expert_bias[0] = 10.0
    moved = router(x)
    assert (moved.topk_TK == 0).any(dim=1).all()
    assert not torch.equal(moved.topk_TK, base.topk_TK)
    # ... but its gate still comes from the unbiased scores, normalised over the selection
    sel = moved.scores_TE.gather(1, moved.topk_TK)
    torch.testing.assert_close(moved.gates_TK, sel / sel.sum(1, keepdim=True))
    torch.testing.assert_close(moved.scores_TE, base.scores_TE)
    assert (moved.gates_TK < 1).all()


def test_route_scale_and_softmax_gates():
    torch.manual_seed(1)
    router = Router(_cfg(score_func="softmax", route_scale=2.5))
    torch.nn.init.normal_(router.weight, std=0.5)
    out = router(torch.randn(16, 32))
    torch.testing.assert_close(out.scores_TE.sum(1), torch.ones(16))
    torch.testing.assert_close(out.gates_TK.sum(1), torch.full((16,), 2.5))


@given(seed=st.integers(0, 2**31 - 1), bias_scale=st.sampled_from([0.0, 0.01, 0.3, 3.0]))
def test_selection_matches_route_topk(seed, bias_scale):
    g = torch.Generator().manual_seed(seed)
    router = Router(_cfg(n_routed_experts=16, top_k=4))
    scores = torch.rand(40, 16, generator=g)
    router.expert_bias.copy_(bias_scale * torch.randn(16, generator=g))
    picked = router.select(scores)
    mask = torch.zeros(40, 16, dtype=torch.bool).scatter_(1, picked, True)
    expected = route_topk(scores.double().numpy(), router.expert_bias.double().numpy(), k=4)
    np.testing.assert_array_equal(mask.numpy(), expected)


def _kept_groups(biased_TE: np.ndarray, n_groups: int, keep: int) -> np.ndarray:
    T, E = biased_TE.shape
    grouped = biased_TE.reshape(T, n_groups, E // n_groups)
    score = np.sort(grouped, axis=-1)[..., -2:].sum(-1)  # top-2 sum per group
    return np.argsort(-score, axis=1, kind="stable")[:, :keep]


@given(seed=st.integers(0, 2**31 - 1), shift=st.sampled_from([0.0, -5.0, -1e3, -1e6]))
def test_group_masking_never_picks_a_masked_expert(seed, shift):
    g = torch.Generator().manual_seed(seed)
    router = Router(_cfg(n_routed_experts=16, top_k=4, n_groups=4, topk_groups=2))
    scores = torch.rand(50, 16, generator=g)
    # large negative biases: masked groups filled with 0 instead of -inf would win here
    router.expert_bias.copy_(shift + 0.1 * torch.randn(16, generator=g))
    picked = router.select(scores).numpy()
    biased = (scores + router.expert_bias).numpy()  # the fp32 values the router ranks
    top2 = np.sort(biased.reshape(50, 4, 4), axis=-1)[..., -2:]
    group_score = top2[..., 0] + top2[..., 1]  # (T, G) top-2 sums, in fp32 like the router
    threshold = np.sort(group_score, axis=1)[:, -2]  # the 2nd largest group score
    for t in range(50):
        groups = set((picked[t] // 4).tolist())
        assert len(groups) <= 2  # experts from at most topk_groups groups
        assert all(group_score[t, grp] >= threshold[t] for grp in groups)  # only kept groups
    if shift >= -5.0:  # fp32 ties are negligible here: the exact selection is determined
        kept = _kept_groups(biased, 4, 2)
        for t in range(50):
            allowed = np.concatenate([np.arange(4 * grp, 4 * grp + 4) for grp in kept[t]])
            best = allowed[np.argsort(-biased[t, allowed], kind="stable")[:4]]
            assert set(picked[t].tolist()) == set(best.tolist())


def test_group_masking_uses_minus_infinity_not_zero():
    router = Router(_cfg(n_routed_experts=8, top_k=2, n_groups=4, topk_groups=1))
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])
    router.expert_bias.fill_(-2.0)  # every biased score is negative; a 0-filled mask would win
    np.testing.assert_array_equal(np.sort(router.select(scores).numpy()), [[0, 1]])


# ------------------------------------------------------------------ load counting


def test_loads_are_counted_once_per_real_training_forward():
    model = DeepSeekMoE(get_preset("tiny"))
    x = torch.randint(0, 256, (2, 16))
    model.eval()
    model(x)
    assert int(model.loads().sum()) == 0
    model.train()
    with torch.inference_mode():
        model(x)
    assert int(model.loads().sum()) == 0
    from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

    for reentrant in (False, True):  # the first pass of re-entrant checkpointing is no_grad
        with set_checkpoint_early_stop(False):
            d = torch.zeros(1, requires_grad=True)  # re-entrant needs an input with grad
            logits = checkpoint(lambda t, d: model(t).logits + d, x, d, use_reentrant=reentrant)
            logits.float().sum().backward()
        assert int(model.loads().sum()) == 2 * 16 * 2 * 2, reentrant  # once, not twice
        for r in model.routers():
            r.reset_load_count()
    model(x)
    loads = model.loads()
    assert loads.shape == (2, 8) and loads.dtype == torch.int64
    np.testing.assert_array_equal(loads.sum(1).numpy(), [2 * 16 * 2] * 2)  # T*K per layer
    model(x)  # accumulates until reset
    np.testing.assert_array_equal(model.loads().sum(1).numpy(), [2 * 2 * 16 * 2] * 2)
    model.reset_loads()
    assert int(model.loads().sum()) == 0


# ------------------------------------------------------------------ the MoE layer vs an oracle


def _reference_moe(layer: MoELayer, x_TD: torch.Tensor) -> torch.Tensor:
    """Explicit per-token loop in float64: scores, biased selection, unbiased gates, experts."""
    r, ex = layer.router, layer.experts
    W = r.weight.double()
    bias = r.expert_bias.double()
    E, K, H = r.n_experts, r.top_k, ex.w2.shape[2]
    outs = []
    for t in range(x_TD.shape[0]):
        x = x_TD[t].double()
        logits = W @ x
        s = torch.sigmoid(logits) if r.score_func == "sigmoid" else torch.softmax(logits, 0)
        biased = (s + bias).detach().numpy()
        allowed = np.arange(E)
        if r.n_groups > 1:
            kept = _kept_groups(biased[None], r.n_groups, r.topk_groups)[0]
            n = E // r.n_groups
            allowed = np.concatenate([np.arange(n * gr, n * gr + n) for gr in kept])
        chosen = allowed[np.argsort(-biased[allowed], kind="stable")[:K]]
        gates = s[chosen] / s[chosen].sum() * r.route_scale
        y = torch.zeros_like(x)
        for gate, k in zip(gates, chosen):
            w13, w2 = ex.w13[k].double(), ex.w2[k].double()
            h = F.silu(w13[:H] @ x) * (w13[H:] @ x)
            y = y + gate * (w2 @ h)
        if layer.shared is not None:
            y = y + _shared64(layer, x)
        outs.append(y)
    return torch.stack(outs)


def _shared64(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    w13, w2 = layer.shared.w13.weight.double(), layer.shared.w2.weight.double()
    h = w13 @ x
    a, b = h.chunk(2)
    return w2 @ (F.silu(a) * b)


@pytest.mark.parametrize("dispatch", ["fused", "grouped", "loop"])
@pytest.mark.parametrize("kw", [
    {},
    {"score_func": "softmax"},
    {"n_groups": 4, "topk_groups": 2, "route_scale": 2.5},
    {"n_shared_experts": 0, "top_k": 3},
])
def test_moe_layer_matches_per_token_reference(dispatch, kw):
    layer = _layer(seed=3, dispatch=dispatch, **kw)
    with torch.no_grad():
        layer.router.expert_bias.copy_(0.05 * torch.randn(8))
    x = torch.randn(2, 12, 32, requires_grad=True)
    y, _ = layer(x)
    ref = _reference_moe(layer, x.detach().reshape(24, 32))
    torch.testing.assert_close(y.reshape(24, 32).double(), ref, rtol=0, atol=1e-5)
    # gradients through dispatch, experts, gates and router, against the float64 oracle
    probe = torch.randn(24, 32)
    (y.reshape(24, 32) * probe).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    gx = x.grad.clone()
    layer64 = _layer(seed=0, dispatch=dispatch, **kw).double()
    layer64.load_state_dict(layer.state_dict())
    x64 = x.detach().double().reshape(24, 32).requires_grad_(True)
    (_reference_moe(layer64, x64) * probe.double()).sum().backward()
    torch.testing.assert_close(gx.reshape(24, 32).double(), x64.grad, rtol=0, atol=1e-5)
    for n, p in layer64.named_parameters():
        torch.testing.assert_close(grads[n].double(), p.grad, rtol=1e-5, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


def test_grouped_and_loop_dispatch_agree_with_empty_experts():
    a = _layer(seed=5, dispatch="grouped", n_routed_experts=16, top_k=2)
    b = _layer(seed=6, dispatch="loop", n_routed_experts=16, top_k=2)
    b.load_state_dict(a.state_dict())
    for layer in (a, b):
        layer.router.expert_bias[:8] = -100.0  # experts 0..7 receive nothing
    x = torch.randn(1, 10, 32)
    ya, ra = a(x)
    yb, _ = b(x)
    assert (ra.topk_TK >= 8).all()
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-6)


def _forward_backward(layer: MoELayer, x: torch.Tensor, probe: torch.Tensor, autocast: bool = False):
    x = x.detach().clone().requires_grad_(x.requires_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, _ = layer(x)
    (y.float() * probe).sum().backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad(set_to_none=True)
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("case", ["fp32", "empty_experts", "bf16_autocast", "input_frozen", "experts_frozen"])
def test_fused_dispatch_is_bit_identical_to_grouped(case):
    """The fused node repeats autograd's arithmetic on the grouped graph, so outputs and
    every gradient (input, both expert weights, the router through the gates) are equal
    bit for bit, including empty experts, autocast and gradients not asked for."""
    kw = dict(n_routed_experts=16, top_k=4, expert_hidden=24, n_shared_experts=0)
    fused = _layer(seed=7, dispatch="fused", **kw)
    grouped = _layer(seed=8, dispatch="grouped", **kw)
    grouped.load_state_dict(fused.state_dict())
    if case == "empty_experts":
        for layer in (fused, grouped):
            layer.router.expert_bias[::3] = -100.0
    if case == "experts_frozen":
        for layer in (fused, grouped):
            layer.experts.w13.requires_grad_(False)
    torch.manual_seed(1)
    x = torch.randn(3, 40, 32, requires_grad=case != "input_frozen")
    probe = torch.randn(3, 40, 32)
    yf, gxf, gf = _forward_backward(fused, x, probe, autocast=case == "bf16_autocast")
    yg, gxg, gg = _forward_backward(grouped, x, probe, autocast=case == "bf16_autocast")
    assert yf.dtype == yg.dtype
    assert torch.equal(yf, yg)
    assert (gxf is None and gxg is None) or torch.equal(gxf, gxg)
    assert gf.keys() == gg.keys()
    for name in gf:
        assert (gf[name] is None) == (gg[name] is None), name
        assert gf[name] is None or torch.equal(gf[name], gg[name]), name
    if case == "empty_experts":
        assert torch.count_nonzero(gf["experts.w2"][::3]) == 0  # zeroed, not left uninitialised
    assert gf["router.weight"] is not None and torch.count_nonzero(gf["router.weight"]) > 0


def _graph_node_names(fn) -> set[str]:
    names, stack, seen = set(), [fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return names


def test_auto_dispatch_runs_the_fused_node_on_the_cpu():
    y, _ = _layer(seed=2, dispatch="auto")(torch.randn(1, 6, 32, requires_grad=True))
    assert any("FusedExperts" in name for name in _graph_node_names(y.grad_fn))
    y, _ = _layer(seed=2, dispatch="grouped")(torch.randn(1, 6, 32, requires_grad=True))
    assert not any("FusedExperts" in name for name in _graph_node_names(y.grad_fn))


# ------------------------------------------------------------------ config


def test_presets_and_paper_shape():
    cfg = get_preset("paper_1b")
    assert (cfg.n_layers, cfg.n_dense_layers, cfg.d_model, cfg.n_heads) == (9, 1, 1024, 8)
    assert (cfg.n_routed_experts, cfg.top_k, cfg.n_shared_experts, cfg.expert_hidden) == (64, 6, 2, 528)
    assert cfg.vocab_size == 256
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top_k = 3
    with pytest.raises(TypeError):
        ModelConfig(128)  # keyword-only
    with pytest.raises(UnknownNameError, match="unknown model preset 'huge'"):
        get_preset("huge")


@pytest.mark.parametrize("kw, match", [
    ({"top_k": 8}, "top_k must satisfy 1 <= top_k < n_routed_experts=8"),
    ({"d_model": 30}, "must split into n_heads=4 heads of even width"),
    ({"n_groups": 3}, "not divisible by n_groups=3"),
    ({"n_groups": 8}, "each of the n_groups=8 groups needs >= 2 experts"),
    ({"n_groups": 4, "topk_groups": 1, "top_k": 3}, "top_k=3 exceeds the 2 experts"),
    ({"topk_groups": 2}, "topk_groups needs n_groups > 1"),
    ({"score_func": "relu"}, "score_func must be one of sigmoid, softmax, sqrtsoftplus"),
    ({"n_dense_layers": 9}, "n_dense_layers=9 exceeds n_layers=4"),
    ({"expert_hidden": 0}, "expert_hidden must be a positive integer"),
    ({"route_scale": -1.0}, "route_scale must be a positive number"),
])
def test_config_validation(kw, match):
    with pytest.raises(InvalidInputError, match=match):
        _cfg(**kw)


def test_model_rejects_too_long_sequences():
    model = DeepSeekMoE(get_preset("tiny"))
    with pytest.raises(InvalidInputError, match="exceeds max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_activated_parameter_count():
    model = DeepSeekMoE(get_preset("tiny"))
    cfg = model.cfg
    per_expert = 3 * cfg.d_model * cfg.expert_hidden
    dropped = cfg.n_moe_layers * (cfg.n_routed_experts - cfg.top_k) * per_expert
    assert model.num_parameters() - model.num_parameters(activated=True) == dropped


def test_paper_1b_size_on_the_meta_device():
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = DeepSeekMoE(get_preset("paper_1b"))
    total, active = model.num_parameters(), model.num_parameters(activated=True)
    # ~0.91B here; [W]'s 32064-token vocabulary would add 2 * 32064 * 1024 = 66M (their "1B")
    assert 0.85e9 < total < 0.95e9
    assert 0.14e9 < active < 0.17e9  # 0.156B activated per token
    assert all(r.expert_bias.dtype == torch.float32 for r in model.routers())
