"""DeepSeek-V4 routing in the model and the newer rules through the Balancer.

Shape legend: ``B`` sequences, ``T`` tokens, ``E`` experts, ``K`` experts per token.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alflb.errors import InvalidInputError
from alflb.model import BalanceConfig, Balancer, DeepSeekMoE, get_preset
from alflb.model.hash_routing import HashRouter, build_deepseek_v4, hash_loads, hash_table


def _ids(seed=0, B=4, T=16):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def test_sqrtsoftplus_scores():
    model = DeepSeekMoE(get_preset("deepseek_v4_tiny"))
    r = model.routers()[0]
    x_TD = torch.randn(10, model.cfg.d_model)
    out = r(x_TD)
    torch.testing.assert_close(out.scores_TE, F.softplus(F.linear(x_TD, r.weight)).sqrt())
    assert model.cfg.n_groups == 1  # no group limit
    with pytest.raises(InvalidInputError, match=r"score_func must be one of sigmoid, softmax, sqrtsoftplus"):
        get_preset("tiny", score_func="relu")


def test_hash_layers_route_by_token_id_and_stay_outside_balancing():
    model = build_deepseek_v4(n_hash_layers=1)
    hashed = [b.ffn.router for b in model.blocks if isinstance(getattr(b.ffn, "router", None), HashRouter)]
    assert len(hashed) == 1 and len(model.routers()) == model.cfg.n_moe_layers - 1
    assert all(not isinstance(r, HashRouter) for r in model.routers())
    # routing depends on the token id only: same ids in another context, same experts
    ids = _ids()
    captured = []
    hook = hashed[0].register_forward_hook(lambda m, a, out: captured.append(out.topk_TK))
    model(ids)
    shuffled = ids.flip(1)
    model(shuffled)
    hook.remove()
    table = hashed[0].table_VK
    torch.testing.assert_close(captured[0], table[ids.reshape(-1)])
    torch.testing.assert_close(captured[1], table[shuffled.reshape(-1)])
    # a bias on the hash router changes nothing (no bias in a hash layer)
    hashed[0].expert_bias.fill_(5.0)
    model(ids)
    assert len(captured) == 2  # hook removed; route again through a fresh hook
    h = hashed[0].register_forward_hook(lambda m, a, out: captured.append(out.topk_TK))
    model(ids)
    h.remove()
    torch.testing.assert_close(captured[-1], captured[0])


def test_balancer_updates_only_learned_routers_and_maxvio_excludes_hash_layers():
    model = build_deepseek_v4(n_hash_layers=1)
    model.train()
    bal = Balancer(BalanceConfig(mode="sign", u=0.05), model)
    bal.init_biases(model)
    bal.begin_step(model)
    out = model(_ids(1), _ids(2))
    bal.loss(out.routing, model)
    loads_LE = bal.end_step(model)
    assert loads_LE.shape == (model.cfg.n_moe_layers - 1, model.cfg.n_routed_experts)
    assert torch.any(model.biases() != 0)
    hashed = next(b.ffn.router for b in model.blocks if isinstance(getattr(b.ffn, "router", None), HashRouter))
    assert torch.all(hashed.expert_bias == 0)  # never updated
    # its loads are counted apart (readable when asked) and left out of the balanced loads
    assert tuple(hash_loads(model).shape) == (1, model.cfg.n_routed_experts)
    assert int(hash_loads(model).sum()) == _ids(1).numel() * model.cfg.top_k


def test_hash_table_is_balanced_over_ids():
    t = hash_table(256, 8, 2, seed=3)
    assert torch.bincount(t.reshape(-1), minlength=8).tolist() == [64] * 8
    assert torch.all(t[:, 0] != t[:, 1])


@pytest.mark.parametrize("mode", ["histogram_quantile", "smebu"])
def test_new_rules_run_in_the_model(mode):
    model = DeepSeekMoE(get_preset("tiny"))
    model.train()
    bal = Balancer(BalanceConfig(mode=mode, u=0.05), model)
    bal.init_biases(model)
    for step in range(2):
        bal.begin_step(model)
        for micro in range(2):  # two micro-batches: the global batch's histogram is their sum
            out = model(_ids(10 * step + micro), _ids(99))
            bal.loss(out.routing, model)
        bal.end_step(model)
    b = model.biases().numpy()
    assert np.all(np.isfinite(b)) and np.any(b != 0)
    np.testing.assert_allclose(b.mean(axis=1), 0, atol=1e-6)  # both rules are mean-centred
