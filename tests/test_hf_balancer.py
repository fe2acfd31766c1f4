"""attach_balancer: counting scope, one update per optimiser step, fp32 biases, checkpoints,
the Trainer callback, and the effect that matters: MaxVio falls on a tiny trained model."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the transformers integration needs transformers (alflb[hf])")

from alflb.errors import InvalidInputError
from alflb.integrations.transformers import RoutingRecorder, attach_balancer, tiny_model
from alflb.metrics import max_violation
from alflb.rules import make_rule

TEXT = (
    "the router adds a bias to each expert score and picks the top experts for every token. "
    "an expert that receives too many tokens sees its bias go down, one that receives too few "
    "sees it go up. the gate weights still come from the unbiased scores, so the model learns "
    "as before while the load spreads evenly over the experts. "
) * 4


def ids(batch=2, seq=8, seed=0):
    return torch.randint(0, 64, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_loads_sum_over_micro_batches_and_skip_eval_and_padding():
    model = tiny_model("mixtral")
    bal = attach_balancer(model, make_rule("sign", u=1e-3))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    for seed in range(2):  # two micro-batches of one optimiser step
        model(input_ids=ids(seed=seed), attention_mask=mask, labels=ids(seed=seed)).loss.backward()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids(seed=5))  # evaluation in between: not counted
    model.train()
    loads = bal.step()
    np.testing.assert_array_equal(loads.sum(-1).numpy(), [2 * 14 * 2] * 2)  # 14 real tokens, top-2
    assert bal.n_updates_L.tolist() == [1, 1] and int(bal.load_LE.sum()) == 0
    b = bal.biases()
    unequal = loads.double() != loads.double().mean(-1, keepdim=True)
    np.testing.assert_allclose(b.abs()[unequal].numpy(), 1e-3)  # sign rule: one step of u
    assert bal.step().sum() == 0 and torch.equal(bal.biases(), b)  # nothing counted: no update


def test_overloaded_expert_goes_down_and_routers_see_the_master():
    model = tiny_model("qwen2_moe")
    bal = attach_balancer(model, make_rule("sign", u=0.01))
    bal.load_LE[:] = torch.tensor([30, 10, 10, 10, 10, 10, 10, 0])
    bal.step()
    assert bal.bias_LE[0, 0] < 0 < bal.bias_LE[0, 7]
    for layer, site in enumerate(bal.sites):
        assert torch.equal(site.bias, bal.bias_LE[layer])


def test_distributed_counts_are_all_reduced(monkeypatch):
    model = tiny_model("mixtral")
    bal = attach_balancer(model, make_rule("sign", u=1e-3))
    model(input_ids=ids())
    local = bal.load_LE.clone()
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.mul_(3))  # three equal ranks
    np.testing.assert_array_equal(bal.step().numpy(), 3 * local.numpy())


def test_bias_stays_fp32_under_bfloat16_and_survives_a_checkpoint():
    model = tiny_model("deepseek_v3")
    bal = attach_balancer(model, make_rule("momentum", u=1e-3))
    for _ in range(3):
        model(input_ids=ids(), labels=ids()).loss.backward()
        bal.step()
    master = bal.biases()
    assert master.abs().max() > 0
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    model.to(torch.bfloat16)
    assert {s.bias.dtype for s in bal.sites} == {torch.float32} and bal.bias_LE.dtype == torch.float32
    assert all(torch.equal(s.bias, master[i]) for i, s in enumerate(bal.sites))
    fresh = tiny_model("deepseek_v3", seed=1)
    fresh_bal = attach_balancer(fresh, make_rule("momentum", u=1e-3))
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(fresh_bal.biases(), master) and fresh_bal.n_updates_L.tolist() == [3, 3]
    torch.testing.assert_close(fresh_bal.velocity_LE, bal.velocity_LE)
    assert all(torch.equal(s.bias, master[i]) for i, s in enumerate(fresh_bal.sites))
    # A checkpoint without the balancer state is refused loudly, not silently zeroed.
    state = {k: v for k, v in fresh.state_dict().items() if not k.startswith("alflb_balancer.")}
    with pytest.raises(RuntimeError, match=r"alflb_balancer\.bias_LE"):
        _attached().load_state_dict(state)


def _attached():
    model = tiny_model("deepseek_v3")
    attach_balancer(model, make_rule("momentum", u=1e-3))
    return model


def test_a_copied_model_counts_into_its_own_balancer():
    model = tiny_model("olmoe")
    bal = attach_balancer(model, make_rule("sign", u=1e-3))
    twin = copy.deepcopy(model)
    twin(input_ids=ids())
    assert int(bal.load_LE.sum()) == 0 and int(twin.alflb_balancer.load_LE.sum()) == 2 * 16 * 2


def test_trainer_callback_steps_once_per_optimiser_step():
    from transformers import TrainerControl, TrainerState

    model = tiny_model("mixtral")
    bal = attach_balancer(model, make_rule("sign", u=1e-3))
    callback = bal.callback()
    for _ in range(2):  # gradient accumulation: two micro-batches
        model(input_ids=ids(), labels=ids()).loss.backward()
    callback.on_step_end(None, TrainerState(), TrainerControl())
    assert bal.n_updates_L.tolist() == [1, 1] and len(callback.loads_NLE) == 1
    assert callback.loads_NLE[0].sum() == 2 * 2 * 16 * 2


def test_bad_rules_and_double_attachment_are_refused():
    model = tiny_model("mixtral")
    with pytest.raises(InvalidInputError, match="needs the batch's scores"):
        attach_balancer(model, make_rule("quantile"))
    with pytest.raises(InvalidInputError, match="must be an alflb UpdateRule"):
        attach_balancer(model, "sign")
    attach_balancer(model, make_rule("sign", u=1e-3))
    with pytest.raises(InvalidInputError, match="already has a balancer"):
        attach_balancer(model, make_rule("sign", u=1e-3))


def _train(u, steps=30, seed=0):
    """Train a 1-layer Mixtral on TEXT; MaxVio (max load / mean load - 1) of each step."""
    data = torch.tensor([ord(c) % 64 for c in TEXT])
    model = tiny_model("mixtral", seed=seed, num_hidden_layers=1)
    bal = attach_balancer(model, make_rule("sign", u=u)) if u else None
    rec = None if bal else RoutingRecorder(model, only_training=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    maxvio = []
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 16, (8,), generator=gen)
        x = torch.stack([data[s:s + 16] for s in starts])
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        if bal is not None:
            loads = bal.step().numpy()
        else:
            rec.end_step()
            topk = rec.steps[-1][0][1]
            loads = np.bincount(topk.ravel(), minlength=8)[None]
        maxvio.append(float(max_violation(loads).mean()))
    return np.array(maxvio)


def test_maxvio_falls_with_the_sign_rule_on_a_trained_model():
    # 30 steps of 128 tokens, 8 experts, top-2: without balancing the router collapses
    # (MaxVio -> 3, its maximum); u = 5e-3 is a tenth of the softmax score scale (1/8),
    # so the sign rule can undo score gaps of ~0.1 within the run (docs/theory.md section 8).
    none, sign = _train(None), _train(5e-3)
    assert none[-10:].mean() > 2.0
    assert sign[-10:].mean() < 0.6 * none[-10:].mean()
