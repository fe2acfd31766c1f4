r"""A DeepSeekMoE decoder-only transformer, read top to bottom.

Norm, attention, expert, router, MoE layer, block, model. Shape legend: ``B`` batch,
``T`` positions (inside the MoE layer ``T`` is the flattened token count ``B*T``),
``D`` model width, ``E`` routed experts, ``K`` experts per token, ``H`` expert width,
``V`` vocabulary.

The router ([V3] section 2.1.2, "noaux_tc"):

.. math::

    s_{ik} = \sigma(u_i^\top w_k) \;\text{(or softmax)}, \qquad
    \mathcal{S}_i = \operatorname{TopK}_k (s_{ik} + b_k), \qquad
    g_{ik} = \rho \frac{s_{ik}}{\sum_{j \in \mathcal{S}_i} s_{ij}} \;(k \in \mathcal{S}_i).

Sign convention (as everywhere in alflb): the router *adds* the bias ``b`` (the dual
variable of the expert-capacity constraints) to the scores for selection only; an
overloaded expert's bias goes *down*. The gate weights use the unbiased scores.

Mechanics that the tests pin:

- the router runs in fp32 (autocast off), and ``expert_bias`` is a persistent fp32
  buffer: never a ``Parameter``, never cast by ``model.to(torch.bfloat16)`` or
  ``.half()`` (:meth:`Router._apply` restores it exactly);
- loads are counted into ``Router.load_count`` once per real training forward (not in
  evaluation, not in ``torch.inference_mode``, not in an activation-checkpointing
  recomputation); under the ``megatron`` semantics (``count_when="grad_enabled"``)
  whenever autograd is enabled, in any module mode, as megatron-core counts; the
  trainer reads and resets them once per optimiser step;
- selection equals :func:`alflb.route_topk` of ``(scores, bias)`` whenever the K-th and
  (K+1)-th biased scores differ (``torch.topk`` breaks exact ties arbitrarily);
- group-limited routing masks the dropped groups with ``-inf`` (never 0), so a large
  negative bias can never select a masked expert;
- where the frameworks differ, ``cfg.semantics`` (:mod:`alflb.semantics`) decides: how
  many of a group's top biased scores rank it (2, or Megatron's ``K // topk_groups``),
  whether a single gate (``K = 1``) is normalised, and whether the scores are rounded to
  the router input's dtype before the bias is added (megatron-core 0.16.1);
- with ``select_on = "logits"`` (quantile balancing under the ``megatron`` semantics,
  set by the balancer) the bias is added to the raw fp32 logits instead of the scores
  for selection; the gates still come from the unbiased scores.

Routed experts are computed grouped by expert: the ``T*K`` (token, expert) slots are
sorted by expert id and each expert's contiguous block is multiplied by its weights; no
Python loop over tokens. On the CPU (``dispatch="auto"`` or ``"fused"``) one autograd node
gathers, multiplies and scatters one expert's block at a time; elsewhere one grouped
matmul per projection (``torch.nn.functional.grouped_mm``) does it, forward and backward;
``dispatch="loop"`` runs a per-expert loop. :mod:`alflb.model.experts` says how.

References
----------
.. [DSM] D. Dai et al., DeepSeekMoE, arXiv:2401.06066 (2024).
.. [V3] DeepSeek-AI, DeepSeek-V3 Technical Report, arXiv:2412.19437 (2024).
.. [W] L. Wang et al., arXiv:2408.15664 (2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from ..semantics import get_semantics
from .config import SCORE_FUNCS, ModelConfig
from .experts import RoutedExperts

__all__ = [
    "Attention",
    "DeepSeekMoE",
    "MoELayer",
    "ModelOutput",
    "RMSNorm",
    "RoutedExperts",
    "Router",
    "RouterOutput",
    "SwiGLU",
    "TransformerBlock",
]


# ----------------------------------------------------------------------------- norm


class RMSNorm(nn.Module):
    r""":math:`y = x / \sqrt{\mathrm{mean}(x^2) + \epsilon} \cdot w`, computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight.type_as(x)


# ------------------------------------------------------------------------ attention


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of rotary embeddings, each ``(max_seq_len, head_dim // 2)``, fp32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of every head: ``x`` is ``(B, n_heads, T, head_dim)``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()  # (B, nh, T, hd/2)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


class Attention(nn.Module):
    """Causal multi-head self-attention with RoPE (``scaled_dot_product_attention``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape  # (B, T, D)
        q, k, v = self.qkv(x).split(D, dim=-1)  # 3 x (B, T, D)
        q, k, v = (t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        cos, sin = self.rope_cos[:T].float(), self.rope_sin[:T].float()  # (T, hd/2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


# --------------------------------------------------------------------------- expert


class SwiGLU(nn.Module):
    r"""A dense SwiGLU FFN, :math:`W_2(\mathrm{silu}(W_1 x) \odot W_3 x)`.

    Used for the dense layers and for the shared experts (``K_s`` shared experts of width
    ``H`` are one SwiGLU of width ``K_s * H``: the same function, fused).
    """

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w13 = nn.Linear(d_model, 2 * hidden, bias=False)  # gate and up projections, fused
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w13(x).chunk(2, dim=-1)  # (..., H) each
        return self.w2(F.silu(a) * b)  # (..., D)


def in_recomputation() -> bool:
    """True while the autograd engine runs a backward pass, where checkpointed layers
    recompute their forward (the test torch's own checkpointing uses)."""
    return torch._C._current_graph_task_id() != -1


@dataclass(frozen=True)
class RouterOutput:
    """One MoE layer's routing of ``T`` tokens (all fp32 except the indices).

    ``scores_TE`` carries gradients (the auxiliary losses use it); ``topk_TK`` holds the
    selected experts (by biased score), ``gates_TK`` their weights (from unbiased scores);
    ``logits_TE`` the detached pre-activation logits (rounded like the scores under
    ``score_dtype="activation"``), which quantile balancing reads under ``megatron``.
    """

    scores_TE: torch.Tensor  # (T, E) fp32
    topk_TK: torch.Tensor  # (T, K) int64
    gates_TK: torch.Tensor  # (T, K) fp32
    batch_size: int  # B, so that T = B * seq_len (sequence-wise losses need it)
    logits_TE: torch.Tensor | None = None  # (T, E) fp32, detached


class Router(nn.Module):
    """Scores, biased selection, gates and (in training) load counting; all in fp32.

    Buffers: ``expert_bias`` ``(E,)`` fp32, persistent (saved in checkpoints), never a
    parameter; ``load_count`` ``(E,)`` int64, not persistent: tokens routed to each
    expert since the last :meth:`reset_load_count`, counted as :meth:`counting` says.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = cfg.n_routed_experts, cfg.top_k
        self.score_func, self.normalize_gates, self.route_scale = (
            cfg.score_func, cfg.normalize_gates, cfg.route_scale,
        )
        self.n_groups, self.topk_groups = cfg.n_groups, cfg.topk_groups
        self.semantics = get_semantics(cfg.semantics)  # where the frameworks differ (alflb.semantics)
        # How the bias enters selection: "add" (scores + bias) or "mul" (scores * bias), as
        # the update rule declares (UpdateRule.capabilities().selection); the Balancer sets it.
        self.selection = "add"
        # What the bias is added to for selection: "scores" or "logits" (Megatron's quantile
        # balancing); the Balancer sets it.
        self.select_on = "scores"
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.d_model))
        self.register_buffer("expert_bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))
        self.register_buffer(
            "load_count", torch.zeros(cfg.n_routed_experts, dtype=torch.int64), persistent=False
        )

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) / .half() cast every floating buffer: put the bias back,
        # exactly (from the tensor before the cast), in fp32 on the new device.
        before = self.expert_bias
        out = super()._apply(fn, recurse)
        if self.expert_bias.dtype != torch.float32:
            self.expert_bias = before.to(device=self.expert_bias.device, dtype=torch.float32)
        return out

    def counting(self) -> bool:
        """Whether this forward counts loads, as the semantics' ``count_when`` says.

        ``"training_forward"`` (the default): a real forward in training mode. Evaluation
        and ``torch.inference_mode`` passes count nothing, and neither does an
        activation-checkpointing recomputation: both checkpointing variants recompute a
        layer while the autograd engine runs the backward pass, so a forward inside a
        backward is never counted (it would count a second time). Grad mode is no test:
        re-entrant checkpointing runs the real forward under ``no_grad``.

        ``"grad_enabled"`` (megatron-core): whenever autograd is enabled, in training or
        evaluation mode alike, recomputations included (re-entrant checkpointing then
        counts its grad-enabled recomputation once; non-re-entrant checkpointing would
        count twice, as megatron-core's rule would).
        """
        if torch.is_inference_mode_enabled():
            return False
        if self.semantics.count_when == "grad_enabled":
            return torch.is_grad_enabled()
        return self.training and not in_recomputation()

    def reset_load_count(self) -> None:
        self.load_count.zero_()

    def select(self, scores_TE: torch.Tensor) -> torch.Tensor:
        """Top-K experts of ``scores + bias`` (with group limiting), shape ``(T, K)``.

        With ``selection == "mul"`` the selection scores are ``scores * bias`` instead.
        """
        if self.selection == "mul":
            biased_TE = scores_TE * self.expert_bias  # (T, E) fp32; selection only
        else:
            biased_TE = scores_TE + self.expert_bias  # (T, E) fp32; selection only
        if self.n_groups > 1:
            T, E = biased_TE.shape
            grouped_TGn = biased_TE.view(T, self.n_groups, E // self.n_groups)  # (T, G, E/G)
            size = self.semantics.group_score_size(self.top_k, self.topk_groups)
            group_score_TG = grouped_TGn.topk(size, dim=-1).values.sum(-1)  # (T, G) top-`size` sum
            keep_TG = group_score_TG.topk(self.topk_groups, dim=-1).indices  # (T, topk_groups)
            drop_TG = torch.ones_like(group_score_TG, dtype=torch.bool).scatter_(1, keep_TG, False)
            # -inf, never 0: a masked expert must lose against any finite biased score.
            biased_TE = grouped_TGn.masked_fill(drop_TG[..., None], float("-inf")).view(T, E)
        return biased_TE.topk(self.top_k, dim=-1).indices  # (T, K)

    def forward(self, x_TD: torch.Tensor, batch_size: int = 1) -> RouterOutput:
        dev, act = x_TD.device.type, x_TD.dtype  # act: the logits' dtype (autocast's, if on)
        act = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else act
        with torch.autocast(device_type=dev, enabled=False):
            logits_TE = F.linear(x_TD.float(), self.weight.float())  # (T, E) fp32
            scores_TE = SCORE_FUNCS[self.score_func](logits_TE)  # (T, E) fp32
            logits_TE = logits_TE.detach()  # (T, E) fp32
            if self.semantics.score_dtype == "activation":
                # megatron-core casts the scores to the logits' dtype before adding the bias
                scores_TE = scores_TE.to(act).float()  # (T, E) rounded, fp32
                logits_TE = logits_TE.to(act).float()  # the logits in the router's dtype
            on_logits = self.select_on == "logits"
            topk_TK = self.select(logits_TE if on_logits else scores_TE.detach())  # (T, K)
            gates_TK = scores_TE.gather(1, topk_TK)  # (T, K) unbiased scores
            if self.semantics.normalise_gates(self.top_k, self.normalize_gates):
                gates_TK = gates_TK / (gates_TK.sum(-1, keepdim=True) + 1e-20)
            gates_TK = gates_TK * self.route_scale
        if self.counting():
            with torch.no_grad():
                self.load_count += torch.bincount(topk_TK.reshape(-1), minlength=self.n_experts)
        return RouterOutput(scores_TE, topk_TK, gates_TK, batch_size, logits_TE)


# ------------------------------------------------------------------------ MoE layer


class MoELayer(nn.Module):
    """Shared experts (always on) plus gate-weighted routed experts; input ``(B, T, D)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.router = Router(cfg)
        self.experts = RoutedExperts(cfg)
        self.shared = (
            SwiGLU(cfg.d_model, cfg.n_shared_experts * cfg.expert_hidden) if cfg.n_shared_experts else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        B, T, D = x.shape  # (B, T, D)
        x_TD = x.reshape(B * T, D)  # (B*T, D)
        routing = self.router(x_TD, batch_size=B)
        y_TD = self.experts(x_TD, routing.topk_TK, routing.gates_TK)  # (B*T, D)
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)
        return y_TD.view(B, T, D), routing  # (B, T, D)


# ---------------------------------------------------------------------------- block


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + ffn(norm(x))`` (dense or MoE)."""

    def __init__(self, cfg: ModelConfig, moe: bool) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = MoELayer(cfg) if moe else SwiGLU(cfg.d_model, cfg.dense_width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput | None]:
        x = x + self.attn(self.attn_norm(x))  # (B, T, D)
        if isinstance(self.ffn, MoELayer):
            y, routing = self.ffn(self.ffn_norm(x))
            return x + y, routing  # (B, T, D)
        return x + self.ffn(self.ffn_norm(x)), None


# ---------------------------------------------------------------------------- model


def _balanced_moe(block: TransformerBlock) -> bool:
    """An MoE block whose router takes part in balancing (hash-routed layers do not)."""
    return isinstance(block.ffn, MoELayer) and getattr(block.ffn.router, "in_balance", True)


@dataclass(frozen=True)
class ModelOutput:
    """Logits ``(B, T, V)``, the mean cross-entropy (when targets were given), one
    :class:`RouterOutput` per MoE layer."""

    logits: torch.Tensor
    loss: torch.Tensor | None
    routing: list[RouterOutput]


class DeepSeekMoE(nn.Module):
    """Decoder-only transformer whose FFNs after the first ``n_dense_layers`` are MoE.

    >>> from alflb.model import get_preset
    >>> model = DeepSeekMoE(get_preset("tiny"))
    >>> out = model(torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 16, dtype=torch.long))
    >>> tuple(out.logits.shape), len(out.routing), tuple(out.routing[0].topk_TK.shape)
    ((2, 16, 256), 2, (32, 2))
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg, moe=i >= cfg.n_dense_layers) for i in range(cfg.n_layers)
        )
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; output projections scaled by ``1/sqrt(2 n_layers)``."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:  # norm weights
                nn.init.ones_(p)
            elif name.endswith(("proj.weight", "w2.weight", "experts.w2")):
                nn.init.normal_(p, std=out_std)
            else:
                nn.init.normal_(p, std=std)
        for router in self.routers():
            router.expert_bias.zero_()
            router.reset_load_count()

    def routers(self) -> list[Router]:
        """The routers of the MoE layers that take part in balancing, in depth order.

        A router with ``in_balance = False`` (a hash-routed layer, :mod:`.hash_routing`)
        is outside the assignment problem: no bias update, no loads, no routing output.
        """
        return [b.ffn.router for b in self.blocks if _balanced_moe(b)]

    def forward(self, idx_BT: torch.Tensor, targets_BT: torch.Tensor | None = None) -> ModelOutput:
        B, T = idx_BT.shape
        if T > self.cfg.max_seq_len:
            raise InvalidInputError(f"sequence length {T} exceeds max_seq_len={self.cfg.max_seq_len}")
        x = self.embed(idx_BT)  # (B, T, D)
        routing: list[RouterOutput] = []
        for block in self.blocks:
            x, r = block(x)
            if r is not None and _balanced_moe(block):
                routing.append(r)
        logits = self.head(self.norm(x))  # (B, T, V)
        loss = None
        if targets_BT is not None:
            loss = F.cross_entropy(logits.float().view(B * T, -1), targets_BT.reshape(B * T))
        return ModelOutput(logits, loss, routing)

    def loads(self) -> torch.Tensor:
        """Counted loads of every MoE layer since the last reset, ``(L, E)`` int64."""
        return torch.stack([r.load_count for r in self.routers()])

    def reset_loads(self) -> None:
        for r in self.routers():
            r.reset_load_count()

    def set_selection(self, selection: str) -> None:
        """How every router combines scores and bias: ``"add"`` or ``"mul"`` (a rule's declared mode)."""
        if selection not in ("add", "mul"):
            raise InvalidInputError(f"selection must be 'add' or 'mul', got {selection!r}")
        for r in self.routers():
            r.selection = selection

    def set_selection_input(self, select_on: str) -> None:
        """What every router adds the bias to for selection: ``"scores"`` or ``"logits"``."""
        if select_on not in ("scores", "logits"):
            raise InvalidInputError(f"select_on must be 'scores' or 'logits', got {select_on!r}")
        for r in self.routers():
            r.select_on = select_on

    def biases(self) -> torch.Tensor:
        """Expert biases of every MoE layer, ``(L, E)`` fp32 (a copy)."""
        return torch.stack([r.expert_bias for r in self.routers()]).clone()

    def num_parameters(self, activated: bool = False) -> int:
        """Parameter count; with ``activated``, routed experts count only ``K`` of ``E``."""
        total = sum(p.numel() for p in self.parameters())
        if activated:
            for b in self.blocks:
                if isinstance(b.ffn, MoELayer):
                    ex = b.ffn.experts
                    per_expert = (ex.w13.numel() + ex.w2.numel()) // ex.n_experts
                    total -= per_expert * (ex.n_experts - self.cfg.top_k)
        return total
