"""transformers integration: routers found per architecture, routing traces, the balancer.

Tiny random models only (hidden 32, 2 layers, 8 experts, top-2); nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the transformers integration needs transformers (alflb[hf])")

from alflb.errors import InvalidInputError
from alflb.integrations.audit import CHECKS, TransformersAdapter, audit
from alflb.integrations.replay import replay_group_limited, replay_trace
from alflb.integrations.transformers import (
    ARCHITECTURES,
    RoutingRecorder,
    attach_balancer,
    find_routers,
    record_routing,
    tiny_model,
)
from alflb.rules import make_rule
from alflb.traces import load_trace

NATIVE = {"deepseek_v3", "deepseek_v4", "afmoe"}


def ids(batch=2, seq=8, seed=0):
    return torch.randint(0, 64, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architecture_as_shipped_and_balanced(arch):
    model = tiny_model(arch)
    x = ids()
    with torch.no_grad():
        before = model(input_ids=x).logits
    shipped = audit(TransformersAdapter(model))
    fails = {c.name for c in shipped.checks if c.status == "fail"}
    if arch in NATIVE:  # transformers casts the native fp32 bias under .to(torch.bfloat16)
        assert fails == {"bias_fp32_under_cast"}, shipped.to_text()
    else:  # no bias at all: nothing to check
        assert {c.status for c in shipped.checks} == {"n/a"}, shipped.to_text()
    balancer = attach_balancer(model, make_rule("sign", u=1e-3))
    with torch.no_grad():
        after = model(input_ids=x).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # a zero bias routes as before
    assert balancer.n_layers == len(find_routers(model)) >= 1
    report = audit(TransformersAdapter(model))
    assert [c.status for c in report.checks] == ["pass"] * len(CHECKS), report.to_text()


def test_unsupported_model_is_refused():
    with pytest.raises(InvalidInputError, match="no supported MoE router in Linear"):
        find_routers(torch.nn.Linear(2, 2))
    with pytest.raises(InvalidInputError, match="unknown architecture 'gpt2'"):
        tiny_model("gpt2")


def test_multiplicative_rule_refused_on_a_native_additive_bias():
    with pytest.raises(InvalidInputError, match="multiplicative rule"):
        attach_balancer(tiny_model("afmoe"), make_rule("multiplicative", u=1e-3))


# ------------------------------------------------------------------ recording


@pytest.fixture(scope="module")
def qwen():
    return tiny_model("qwen3_moe")


def test_trace_round_trip_and_metadata(qwen, tmp_path):
    batches = [{"input_ids": ids(seed=s)} for s in range(3)]
    trace = record_routing(qwen, batches, tmp_path / "t.npz")
    assert trace.shape == (3, 2, 16, 8)
    np.testing.assert_array_equal(trace.loads_NLE.sum(-1), np.full((3, 2), 32))
    loaded = load_trace(tmp_path / "t.npz")
    np.testing.assert_array_equal(loaded.scores_NLTE, trace.scores_NLTE)
    meta = loaded.metadata
    assert (meta["k"], meta["score_func"], meta["n_group"], meta["route_scale"]) == (2, "softmax", 1, 1.0)
    assert meta["counting"]["recomputation"] == "excluded" and meta["model_type"] == "qwen3_moe"
    topk = np.load(tmp_path / meta["topk_file"])["topk_NLTK"]
    assert topk.shape == (3, 2, 16, 2)
    np.testing.assert_allclose(loaded.scores_NLTE.sum(-1), 1.0, rtol=1e-5)  # softmax scores


def test_padding_and_eval_are_not_recorded(qwen):
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, 5:] = 0  # 3 padding tokens
    trace = record_routing(qwen, [{"input_ids": ids(), "attention_mask": mask}])
    assert trace.shape[2] == 13 and int(trace.loads_NLE.sum()) == 2 * 13 * 2
    qwen.eval()
    try:
        with pytest.raises(InvalidInputError, match="nothing was recorded"):
            record_routing(qwen, [{"input_ids": ids()}], only_training=True)
    finally:
        qwen.train()


def test_unequal_steps_need_tokens_per_step(qwen):
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 4:] = 0
    batches = [{"input_ids": ids(), "attention_mask": mask}, {"input_ids": ids(seed=1)}]
    with pytest.raises(InvalidInputError, match="pass tokens_per_step"):
        record_routing(qwen, batches)
    assert record_routing(qwen, batches, tokens_per_step=7).shape == (4, 2, 7, 8)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_recomputation_is_not_recorded(reentrant):
    model = tiny_model("qwen3_moe")
    batches = [{"input_ids": ids(seed=s), "labels": ids(seed=s)} for s in range(2)]
    plain = record_routing(model, batches, backward=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    # Mutant: a hook that counts every training call sees the recomputation too.
    naive = []
    handles = [s.router.register_forward_hook(lambda m, a, out: naive.append(out[2].numel()))
               for s in find_routers(model)]
    rec = RoutingRecorder(model)
    for batch in batches:
        model(**batch).loss.backward()
        rec.end_step()
    rec.close()
    for h in handles:
        h.remove()
    trace = rec.to_trace()
    assert rec.n_forwards == 2 * 2  # batches x layers
    assert sum(naive) == 2 * int(plain.loads_NLE.sum())  # the mutant counts twice
    np.testing.assert_array_equal(trace.loads_NLE, plain.loads_NLE)
    np.testing.assert_allclose(trace.scores_NLTE, plain.scores_NLTE, rtol=1e-6, atol=1e-7)


def test_replay_reproduces_deepseek_v3_selection():
    model = tiny_model("deepseek_v3")
    gen = torch.Generator().manual_seed(3)
    for s in find_routers(model):
        s.bias.copy_(0.05 * torch.randn(s.n_experts, generator=gen))  # groups of 2, keep 2 of 4
    rec = RoutingRecorder(model)
    with torch.no_grad():
        for seed in range(2):
            model(input_ids=ids(batch=4, seq=16, seed=seed))
            rec.end_step()
    rec.close()
    trace = rec.to_trace()
    _, topk = rec.arrays()
    assert trace.metadata["n_group"] == 4 and trace.metadata["topk_group"] == 2
    for layer in range(trace.shape[1]):
        replayed = replay_trace(trace, layer)
        np.testing.assert_array_equal(replayed, np.sort(topk[:, layer], axis=-1))  # every token
        # Without the group limit the same scores route differently: the replay is not vacuous.
        plain = np.stack([replay_group_limited(s, trace.metadata["bias_at_record_LE"][layer], 2)
                          for s in trace.scores_NLTE[:, layer]])
        assert (plain != replayed).any()


def test_replay_masks_groups_with_minus_infinity():
    scores = np.array([[0.9, 0.8, 0.1, 0.05]], np.float32)  # group 0 wins, group 1 masked
    np.testing.assert_array_equal(replay_group_limited(scores, np.full(4, -2.0), 2, 2, 1), [[0, 1]])
    with pytest.raises(InvalidInputError, match="cannot form n_group = 3"):
        replay_group_limited(scores, np.zeros(4), 2, 3, 1)


# ------------------------------------------------- mutants on the real architectures


def _dsv3_zero_mask_forward(self, hidden_states):
    # DeepseekV3's routing with the masked groups filled with 0 instead of -inf.
    scores = torch.sigmoid(torch.nn.functional.linear(hidden_states.view(-1, self.hidden_dim).float(),
                                                      self.weight.float()))
    choice = scores + self.e_score_correction_bias
    grouped = choice.view(-1, self.num_group, self.num_experts // self.num_group)
    keep = grouped.topk(2, dim=-1)[0].sum(-1).topk(self.topk_group, dim=-1)[1]
    mask = torch.zeros(grouped.shape[:2]).scatter_(1, keep, 1.0).bool()
    choice = grouped.masked_fill(~mask[..., None], 0.0).view(-1, self.num_experts)
    topk = choice.topk(self.top_k, dim=-1)[1]
    gates = scores.gather(1, topk)
    return scores, gates / gates.sum(-1, keepdim=True) * self.routed_scaling_factor, topk


def _qwen_bias_in_gates_forward(self, hidden_states):
    logits = torch.nn.functional.linear(hidden_states.reshape(-1, self.hidden_dim), self.weight)
    probs = torch.softmax(logits, dtype=torch.float, dim=-1) + self.alflb_bias  # the bug
    topk = probs.topk(self.top_k, dim=-1).indices
    return logits, probs.gather(1, topk), topk


@pytest.mark.parametrize(("arch", "forward", "check"), [
    ("deepseek_v3", _dsv3_zero_mask_forward, "masked_groups_neg_inf"),
    ("qwen3_moe", _qwen_bias_in_gates_forward, "gates_selection_only"),
])
def test_audit_catches_a_broken_architecture_router(arch, forward, check):
    import types

    model = tiny_model(arch)
    attach_balancer(model, make_rule("sign", u=1e-3))
    site = find_routers(model)[0]
    site.router.forward = types.MethodType(forward, site.router)
    report = audit(TransformersAdapter(model))
    assert {c.name for c in report.checks if c.status == "fail"} == {check}, report.to_text()


def test_replay_follows_a_bias_that_moved_during_recording(tmp_path):
    model = tiny_model("deepseek_v3")
    bal = attach_balancer(model, make_rule("sign", u=0.05))
    batches = [{"input_ids": ids(batch=4, seq=8, seed=s), "labels": ids(batch=4, seq=8, seed=s)}
               for s in range(3)]
    rec = RoutingRecorder(model, only_training=True)
    for batch in batches:  # training steps: the balancer moves the bias after each
        model(**batch).loss.backward()
        rec.end_step()
        bal.step()
    rec.close()
    trace = rec.to_trace()
    assert trace.metadata["bias_constant"] is False
    _, topk = rec.arrays()
    bias_NLE = np.asarray(rec.bias_steps)  # the bias each step was routed with
    np.testing.assert_array_equal(bias_NLE[0], 0.0)
    assert np.abs(bias_NLE[2]).max() > 0
    for layer in range(2):
        np.testing.assert_array_equal(replay_trace(trace, layer, bias_NLE[:, layer]),
                                      np.sort(topk[:, layer], axis=-1))
    with pytest.raises(InvalidInputError, match=r"bias_E must have shape \(E,\) or \(N, E\)"):
        replay_trace(trace, 0, np.zeros((2, 8)))
