r"""Configuration of the DeepSeekMoE model: one frozen dataclass and three named presets.

A DeepSeekMoE transformer ([DSM], [V3]) replaces the FFN of every layer after the first
``n_dense_layers`` by

.. math::

    h = u + \sum_{s \le K_s} \mathrm{FFN}^{\text{shared}}_s(u)
          + \sum_{k \in \mathrm{TopK}(s(u) + b)} g_k(u)\, \mathrm{FFN}_k(u),
    \qquad g_k = \rho\, \frac{s_k(u)}{\sum_{j \in \mathrm{TopK}} s_j(u)},

with ``K_s`` shared experts that every token uses, ``E`` fine-grained routed experts
(SwiGLU, hidden width ``expert_hidden``), router scores ``s`` (sigmoid or softmax), the
expert bias ``b`` used for *selection only*, and the route scale ``rho``.

Presets
-------
``tiny``
    CI: 3 layers (the first dense), width 64, 8 routed experts top-2, 1 shared. Trains in
    seconds on a CPU.
``small``
    The CPU comparison: 4 layers (the first dense), width 128, 16 routed experts top-4,
    1 shared, expert width 64, sigmoid scores. A few minutes of CPU per run.
``deepseek_v4_tiny``
    DeepSeek-V4-style routing at ``tiny`` size (4 layers, the first dense): scores
    :math:`\sqrt{\mathrm{softplus}(x)}`, no group limit; with
    :func:`alflb.model.hash_routing.build_deepseek_v4` its first MoE layer routes by a
    token-id hash table (no bias, outside the balancing).
``paper_1b``
    The 1B model of Wang et al. [W] (Table 1): 9 layers, the first dense, hidden 1024,
    8 heads, 64 routed experts top-6, 2 shared, expert width 528. **Deviation**: the vocabulary
    is 256 (byte-level data here) instead of [W]'s 32064, so the embedding and output
    matrices are smaller than the paper's; the dense first layer uses a SwiGLU of width
    ``(2 + 6) * 528 = 4224`` (the activated width of an MoE layer), which [W] does not state.

References
----------
.. [DSM] D. Dai et al., DeepSeekMoE, arXiv:2401.06066 (2024).
.. [V3] DeepSeek-AI, DeepSeek-V3 Technical Report, arXiv:2412.19437 (2024), section 2.1.2.
.. [W] L. Wang et al., Auxiliary-Loss-Free Load Balancing Strategy for
   Mixture-of-Experts, arXiv:2408.15664 (2024), Table 1.

Examples
--------
>>> cfg = get_preset("tiny")
>>> cfg.n_routed_experts, cfg.top_k, cfg.n_moe_layers
(8, 2, 2)
>>> get_preset("tiny", top_k=3).top_k
3
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidInputError, UnknownNameError

__all__ = ["PRESETS", "SCORE_FUNCS", "ModelConfig", "get_preset"]

ScoreFunc = Literal["sigmoid", "softmax", "sqrtsoftplus"]


def _sqrt_softplus(logits_TE):
    import torch.nn.functional as F

    return F.softplus(logits_TE).sqrt()


#: Router score functions by name, applied to the fp32 logits ``(T, E)``: ``sigmoid``
#: ([V3]), ``softmax`` ([DSM]), ``sqrtsoftplus`` = :math:`\sqrt{\mathrm{softplus}(x)}`
#: (DeepSeek-V4; positive and unbounded, so a bias in score units acts on a different scale).
SCORE_FUNCS = {
    "sigmoid": lambda logits_TE: logits_TE.sigmoid(),
    "softmax": lambda logits_TE: logits_TE.softmax(dim=-1),
    "sqrtsoftplus": _sqrt_softplus,
}
Dispatch = Literal["auto", "fused", "grouped", "loop"]


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")


def _positive_float(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidInputError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape and routing of a DeepSeekMoE decoder-only transformer (validated on creation)."""

    vocab_size: int = 256  # byte-level tokens
    max_seq_len: int = 128  # longest context the RoPE tables cover
    n_layers: int = 4  # transformer blocks
    n_dense_layers: int = 1  # the first blocks use a dense SwiGLU FFN instead of MoE
    d_model: int = 128  # residual width D
    n_heads: int = 4  # attention heads; head width D / n_heads must be even (RoPE)
    dense_hidden: int | None = None  # dense FFN width; None: (n_shared + top_k) * expert_hidden
    n_routed_experts: int = 16  # E, fine-grained routed experts per MoE layer
    top_k: int = 4  # K, routed experts per token
    n_shared_experts: int = 1  # K_s, always-on experts (fused into one SwiGLU of width K_s*H)
    expert_hidden: int = 64  # H, hidden width of one routed expert
    score_func: ScoreFunc = "sigmoid"  # router affinity s = sigmoid(uW), softmax(uW) or sqrt(softplus(uW))
    normalize_gates: bool = True  # divide the selected scores by their sum
    route_scale: float = 1.0  # rho, multiplies the gate weights (2.5 in V3)
    n_groups: int = 1  # expert groups for group-limited routing (1: off)
    topk_groups: int = 1  # groups kept per token when n_groups > 1
    rope_theta: float = 10000.0  # RoPE base
    norm_eps: float = 1e-6  # RMSNorm epsilon
    init_std: float = 0.02  # normal init of weights; output projections are scaled down by depth
    dispatch: Dispatch = "auto"  # routed experts: fused blocks (CPU), grouped matmul (else), a loop
    semantics: str = "deepseek_v3"  # whose definitions where frameworks differ (alflb.semantics.SEMANTICS)

    def __post_init__(self) -> None:
        for name in (
            "vocab_size", "max_seq_len", "n_layers", "d_model", "n_heads",
            "n_routed_experts", "top_k", "expert_hidden", "n_groups", "topk_groups",
        ):
            _positive_int(getattr(self, name), name)
        for name in ("n_dense_layers", "n_shared_experts"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidInputError(f"{name} must be a non-negative integer, got {v!r}")
        if self.dense_hidden is not None:
            _positive_int(self.dense_hidden, "dense_hidden")
        for name in ("route_scale", "rope_theta", "norm_eps", "init_std"):
            _positive_float(getattr(self, name), name)
        if self.n_dense_layers > self.n_layers:
            raise InvalidInputError(
                f"n_dense_layers={self.n_dense_layers} exceeds n_layers={self.n_layers}"
            )
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise InvalidInputError(
                f"d_model={self.d_model} must split into n_heads={self.n_heads} heads of even width (RoPE)"
            )
        E, K = self.n_routed_experts, self.top_k
        if not 1 <= K < E:
            raise InvalidInputError(f"top_k must satisfy 1 <= top_k < n_routed_experts={E}, got {K}")
        if self.score_func not in SCORE_FUNCS:
            raise InvalidInputError(
                f"score_func must be one of {', '.join(SCORE_FUNCS)}, got {self.score_func!r}"
            )
        if self.dispatch not in ("auto", "fused", "grouped", "loop"):
            raise InvalidInputError(f"dispatch must be 'auto', 'fused', 'grouped' or 'loop', got {self.dispatch!r}")
        from ..semantics import get_semantics  # a leaf module; imported here to keep config light

        object.__setattr__(self, "semantics", get_semantics(self.semantics).name)
        if self.n_groups > 1:
            if E % self.n_groups:
                raise InvalidInputError(f"n_routed_experts={E} is not divisible by n_groups={self.n_groups}")
            if E // self.n_groups < 2:
                raise InvalidInputError(
                    "group-limited routing ranks groups by their top-2 scores: each of the "
                    f"n_groups={self.n_groups} groups needs >= 2 experts, got {E // self.n_groups}"
                )
            if not 1 <= self.topk_groups <= self.n_groups:
                raise InvalidInputError(
                    f"topk_groups must satisfy 1 <= topk_groups <= n_groups={self.n_groups}, got {self.topk_groups}"
                )
            size = get_semantics(self.semantics).group_score_size(K, self.topk_groups)
            if size > E // self.n_groups:
                raise InvalidInputError(
                    f"semantics {self.semantics!r} ranks groups by their top-{size} scores, more than the "
                    f"{E // self.n_groups} experts of each of the n_groups={self.n_groups} groups"
                )
            if K > self.topk_groups * (E // self.n_groups):
                raise InvalidInputError(
                    f"top_k={K} exceeds the {self.topk_groups * (E // self.n_groups)} experts "
                    f"of the topk_groups={self.topk_groups} kept groups"
                )
        elif self.topk_groups != 1:
            raise InvalidInputError("topk_groups needs n_groups > 1 (group-limited routing is off)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    @property
    def dense_width(self) -> int:
        """Hidden width of a dense FFN layer (the activated width of an MoE layer by default)."""
        if self.dense_hidden is not None:
            return self.dense_hidden
        return (self.n_shared_experts + self.top_k) * self.expert_hidden

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"unknown ModelConfig fields: {unknown}")
        return cls(**data)


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        max_seq_len=64, n_layers=3, n_dense_layers=1, d_model=64, n_heads=4,
        n_routed_experts=8, top_k=2, n_shared_experts=1, expert_hidden=32,
    ),
    "small": ModelConfig(
        max_seq_len=128, n_layers=4, n_dense_layers=1, d_model=128, n_heads=4,
        n_routed_experts=16, top_k=4, n_shared_experts=1, expert_hidden=64,
    ),
    # DeepSeek-V4-style routing at tiny size: sqrt(softplus) scores, no group limit; its
    # hash-routed first MoE layer is installed by alflb.model.hash_routing.build_deepseek_v4.
    "deepseek_v4_tiny": ModelConfig(
        max_seq_len=64, n_layers=4, n_dense_layers=1, d_model=64, n_heads=4,
        n_routed_experts=8, top_k=2, n_shared_experts=1, expert_hidden=32,
        score_func="sqrtsoftplus", n_groups=1,
    ),
    "paper_1b": ModelConfig(
        max_seq_len=2048, n_layers=9, n_dense_layers=1, d_model=1024, n_heads=8,
        n_routed_experts=64, top_k=6, n_shared_experts=2, expert_hidden=528,
    ),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset (``tiny``, ``small``, ``deepseek_v4_tiny``, ``paper_1b``), with fields
    replaced by ``overrides``."""
    if name not in PRESETS:
        raise UnknownNameError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
