r"""Auxiliary-loss-free balancing and routing traces for transformers MoE models.

Shape legend: ``N`` steps, ``L`` MoE layers, ``T`` tokens, ``E`` experts, ``K`` top-k.

Sign convention (as everywhere in alflb): the router *adds* the bias ``b`` to the scores
for top-K selection only; an overloaded expert's bias goes *down*:

.. math::

    \text{select}_i = \operatorname{TopK}_k(\gamma_{ik} + b_k), \qquad
    b \leftarrow \text{rule}(b, A, c), \quad c_k = K T / E,

with ``A`` the loads of the global batch (all micro-batches; summed over data-parallel
ranks), counted only in real training forwards (not in eval, not in an
activation-checkpointing recomputation, not on padding tokens), and one update per
optimiser step, after ``optimizer.step()`` (docs/theory.md section 3).

- :func:`record_routing` runs batches through a model and writes an alflb trace of every
  MoE layer (scores, loads; selected ids beside it).
- :func:`attach_balancer` drives each router's selection bias with an alflb rule; the
  returned :class:`Balancer` is an ``nn.Module`` registered on the model as
  ``alflb_balancer``, so its state (fp32 master biases, rule states) is in the model's
  ``state_dict``; ``model.to(torch.bfloat16)`` leaves every bias fp32.

Supported: DeepseekV3, DeepseekV4 (score-routed layers), Afmoe (native biases);
Qwen2-MoE, Qwen3-MoE, OLMoE, Mixtral (a selection-only bias is added to the router).

Example (needs transformers, so not a doctest; ``tests/test_hf_balancer.py`` runs it)::

    from alflb.integrations.transformers import tiny_model, attach_balancer
    from alflb.rules import make_rule
    model = tiny_model("mixtral")
    balancer = attach_balancer(model, make_rule("sign", u=0.01))
    _ = model(input_ids=torch.randint(0, 64, (2, 8)))
    int(balancer.load_LE.sum())              # 2 layers x 16 tokens x top-2
    # -> 64
    balancer.step().shape
    # -> torch.Size([2, 8])
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError
from ..rules import UpdateRule
from ..runio import save_npz_atomic
from ..traces import Trace
from ._arch import find_routers
from ._balancer import Balancer
from ._scope import MaskCapture, in_recomputation, token_mask

__all__ = [
    "ARCHITECTURES", "Balancer", "RoutingRecorder", "attach_balancer", "find_routers",
    "record_routing", "tiny_config", "tiny_model",
]

_COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
# Tiny random configurations (8 experts, top-2, 2 layers) that build in well under a second.
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "deepseek_v3": ("DeepseekV3Config", dict(
        num_key_value_heads=4, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2,
        n_group=4, topk_group=2, first_k_dense_replace=0, n_shared_experts=1, q_lora_rank=None,
        kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
        routed_scaling_factor=2.5)),
    "deepseek_v4": ("DeepseekV4Config", dict(
        moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2, head_dim=16,
        mlp_layer_types=["moe", "moe"])),
    "qwen2_moe": ("Qwen2MoeConfig", dict(
        moe_intermediate_size=16, shared_expert_intermediate_size=32, num_experts=8,
        num_experts_per_tok=2)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(moe_intermediate_size=16, num_experts=8,
                                         num_experts_per_tok=2, head_dim=8)),
    "olmoe": ("OlmoeConfig", dict(num_experts=8, num_experts_per_tok=2, eos_token_id=None,
                                  pad_token_id=None, bos_token_id=None)),
    "mixtral": ("MixtralConfig", dict(num_local_experts=8, num_experts_per_tok=2)),
    "afmoe": ("AfmoeConfig", dict(moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                                  num_dense_layers=0, head_dim=8)),
}


def tiny_config(arch: str, **overrides: Any) -> Any:
    """A tiny random transformers config of ``arch`` (a key of :data:`ARCHITECTURES`)."""
    import transformers

    if arch not in ARCHITECTURES:
        raise InvalidInputError(f"unknown architecture {arch!r}; available: {', '.join(ARCHITECTURES)}")
    cls_name, kwargs = ARCHITECTURES[arch]
    cls = getattr(transformers, cls_name, None)
    if cls is None:
        raise InvalidInputError(f"this transformers ({transformers.__version__}) has no {cls_name}")
    return cls(**{**_COMMON, **kwargs, **overrides})


def tiny_model(arch: str, seed: int = 0, **overrides: Any) -> Any:
    """A tiny randomly initialised causal LM of ``arch`` (fp32, training mode)."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(arch, **overrides))
    return model.train()


# ------------------------------------------------------------------ counting hooks


class RoutingRecorder:
    """Collects scores, selected ids and loads of every router of a model, per step.

    Parameters
    ----------
    model : transformers model
        Its routers are found by class (:func:`find_routers`).
    only_training : bool
        Skip forwards made in eval mode (record training loads only).

    Recomputations under activation checkpointing and padding tokens (by the
    ``attention_mask`` passed to the model) are never recorded. Call :meth:`end_step`
    after each step, :meth:`to_trace` at the end, :meth:`close` to remove the hooks.
    """

    def __init__(self, model: nn.Module, *, only_training: bool = False) -> None:
        self.sites = find_routers(model)
        self.only_training = bool(only_training)
        self._mask = MaskCapture(model)
        self._cur: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self.sites]
        self.steps: list[list[tuple[np.ndarray, np.ndarray]]] = []
        self.n_forwards = 0  # counted router calls, all layers
        self._handles = [s.router.register_forward_hook(self._hook(i)) for i, s in enumerate(self.sites)]
        self.bias_LE = self._biases()  # at the start of the recording
        # The bias each step was routed with (taken at the step's first call of each layer).
        self.bias_steps: list[list[list[float] | None]] = []
        self._step_bias: list[list[float] | None] = list(self.bias_LE)

    def _biases(self) -> list[list[float] | None]:
        return [None if s.bias is None else s.bias.detach().float().cpu().tolist() for s in self.sites]

    def _hook(self, layer: int):
        site = self.sites[layer]

        def hook(module: Any, args: tuple, output: Any) -> None:
            if in_recomputation() or (self.only_training and not module.training):
                return
            scores_TE = site.scores(output[0].detach()).reshape(-1, site.n_experts)
            topk_TK = output[2].detach().reshape(-1, site.k)
            mask = token_mask(self._mask.mask, scores_TE.shape[0])
            if mask is not None:
                scores_TE, topk_TK = scores_TE[mask], topk_TK[mask]
            if not self._cur[layer]:
                bias = site.bias
                self._step_bias[layer] = None if bias is None else bias.detach().float().cpu().tolist()
            self._cur[layer].append((scores_TE.cpu(), topk_TK.cpu()))
            self.n_forwards += 1

        return hook

    def end_step(self) -> None:
        """Close a step: the calls of each router since the last step are concatenated."""
        if not any(self._cur):
            return
        step = []
        for calls in self._cur:
            if not calls:
                raise InvalidInputError("a step saw some MoE layers but not all of them")
            step.append((torch.cat([c[0] for c in calls]).numpy(), torch.cat([c[1] for c in calls]).numpy()))
        self.steps.append(step)
        self.bias_steps.append(list(self._step_bias))
        self._cur = [[] for _ in self.sites]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._mask.remove()
        self._handles = []

    def arrays(self, tokens_per_step: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``scores_NLTE`` (float32) and ``topk_NLTK`` (int64) of the recorded steps.

        With ``tokens_per_step``, each layer's token stream is cut into steps of that many
        tokens (the remainder is dropped); without it every step must hold as many tokens.
        """
        if not self.steps:
            raise InvalidInputError("nothing was recorded (no counted forward pass)")
        n_layers = len(self.sites)
        streams = [(np.concatenate([s[layer][0] for s in self.steps]),
                    np.concatenate([s[layer][1] for s in self.steps])) for layer in range(n_layers)]
        if tokens_per_step is None:
            sizes = {s[0][0].shape[0] for s in self.steps}
            if len(sizes) != 1:
                raise InvalidInputError(
                    f"steps hold different token counts {sorted(sizes)} (padding masks differ): "
                    "pass tokens_per_step"
                )
            tokens_per_step = sizes.pop()
        n = streams[0][0].shape[0] // tokens_per_step
        if n == 0:
            raise InvalidInputError(f"fewer than tokens_per_step={tokens_per_step} tokens were recorded")
        cut = n * tokens_per_step
        scores = np.stack([s[0][:cut].reshape(n, tokens_per_step, -1) for s in streams], axis=1)
        topk = np.stack([s[1][:cut].reshape(n, tokens_per_step, -1) for s in streams], axis=1)
        return scores.astype(np.float32), topk.astype(np.int64)

    def to_trace(self, tokens_per_step: int | None = None, metadata: dict | None = None) -> Trace:
        """The recording as a :class:`~alflb.traces.Trace` (loads from the selected ids)."""
        scores, topk = self.arrays(tokens_per_step)
        n, n_layers, _, e = scores.shape
        loads = np.zeros((n, n_layers, e), dtype=np.int64)
        for i in range(n):
            for layer in range(n_layers):
                loads[i, layer] = np.bincount(topk[i, layer].ravel(), minlength=e)
        site = self.sites[0]
        meta = {
            "source": "transformers", "layers": [s.name for s in self.sites],
            **{key: site.semantics()[key] for key in ("k", "score_func", "n_group", "topk_group",
                                                      "route_scale", "normalize_gates", "bias")},
            "activation": site.score_func,
            "routing": [s.semantics() for s in self.sites],
            "bias_at_record_LE": self.bias_LE,
            # False when a balancer moved the bias during the recording (the ids file
            # then holds the bias each step was routed with, bias_NLE).
            "bias_constant": all(b == self.bias_LE for b in self.bias_steps),
            "counting": {"only_training": self.only_training, "recomputation": "excluded",
                         "padding": "excluded (attention_mask)", "tokens_per_step": int(scores.shape[2])},
            **(metadata or {}),
        }
        return Trace(scores, loads, meta)


def record_routing(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    path: str | os.PathLike | None = None,
    *,
    backward: bool = False,
    only_training: bool = False,
    tokens_per_step: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Trace:
    """Run ``batches`` through ``model`` and record every MoE layer's routing.

    Each batch (a dict of model inputs: ``input_ids``, ``attention_mask``, ``labels``)
    is one step. With ``backward=True`` the loss is back-propagated too (gradients
    accumulate; no optimiser step), so checkpointed layers recompute; recomputations are
    never recorded, nor padding tokens, nor (with ``only_training``) eval forwards.

    Returns the :class:`~alflb.traces.Trace` (tier ``"scores"``, with its selected ids
    ``topk_NLTK`` and, when every router has a bias, the ``bias_NLE`` each step was
    routed with); with ``path`` it is saved there, and the ids and biases also beside it
    (``<stem>.topk.npz``, named in the metadata as ``topk_file``) for older readers.
    """
    rec = RoutingRecorder(model, only_training=only_training)
    try:
        for batch in batches:
            if backward:
                model(**batch).loss.backward()
            else:
                with torch.no_grad():
                    model(**batch)
            rec.end_step()
    finally:
        rec.close()
    meta = dict(metadata or {})
    meta["model_type"] = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if path is not None:
        path = Path(path)
        meta["topk_file"] = path.with_suffix(".topk.npz").name
    trace = rec.to_trace(tokens_per_step, meta)
    _, topk = rec.arrays(tokens_per_step)
    extra = {}
    if all(b is not None for step in rec.bias_steps for b in step):
        extra["bias_NLE"] = np.asarray(rec.bias_steps, dtype=np.float32)  # per recorded batch
    # The ids (and the biases, when the steps are the recorded batches) travel in the trace
    # itself; the sidecar stays for readers of the earlier two-file layout.
    same_steps = extra.get("bias_NLE") is not None and len(extra["bias_NLE"]) == trace.shape[0]
    trace = Trace(trace.scores_NLTE, trace.loads_NLE, trace.metadata, topk,
                  extra["bias_NLE"] if same_steps else None)
    if path is not None:
        save_npz_atomic(path.with_suffix(".topk.npz"), topk_NLTK=topk, **extra)
        trace.save(path)
    return trace


def attach_balancer(model: nn.Module, rule: UpdateRule) -> Balancer:
    """Attach an auxiliary-loss-free balancer to every MoE router of ``model``.

    Parameters
    ----------
    model : transformers model
        Routers are found by class (:func:`find_routers`). Attach before wrapping the
        model in DDP and before loading a checkpoint that holds balancer state.
    rule : alflb.rules.UpdateRule
        e.g. ``make_rule("sign", u=1e-3)``; the rule's selection mode decides ``+`` or
        ``*`` (multiplicative rules only on routers without a native additive bias).

    Returns
    -------
    Balancer
        Registered as ``model.alflb_balancer``; biases start from the router's own bias
        (native) or the rule's initial bias (added).
    """
    if hasattr(model, "alflb_balancer"):
        raise InvalidInputError("this model already has a balancer (model.alflb_balancer)")
    balancer = Balancer(model, rule, find_routers(model))
    model.add_module("alflb_balancer", balancer)
    return balancer


def describe(model: nn.Module) -> str:
    """One JSON line per router: its name and routing semantics."""
    return "\n".join(json.dumps({"name": s.name, **s.semantics()}) for s in find_routers(model))
