r"""Where each transformers MoE architecture keeps its router, and how its bias enters.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` top-k, ``D`` model width.

Sign convention (as everywhere in alflb): the router *adds* the bias ``b`` to the scores
for top-K selection only; an overloaded expert's bias goes *down*. Gate weights come
from the unbiased scores.

Every supported router returns ``(logits_TE, gates_TK, topk_TK)``. DeepseekV3, the
score-routed layers of DeepseekV4 and Afmoe carry a native fp32 bias
(``e_score_correction_bias``; Afmoe's ``expert_bias`` lives on the MoE block and is
passed to the router). Qwen2-MoE, Qwen3-MoE, OLMoE and Mixtral have none: :func:`add_bias`
gives their router an fp32 buffer ``alflb_bias`` and a forward whose selection uses
``scores + bias`` (``scores * bias`` for a multiplicative rule) while the gates keep the
unbiased softmax, exactly as the original forward computes them (identical outputs when
the bias is zero).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

__all__ = ["NATIVE_BIAS", "PATCHABLE", "RouterSite", "add_bias", "find_routers"]

# Router classes whose selection already adds an fp32 bias: class name -> (where, buffer).
NATIVE_BIAS = {
    "DeepseekV3TopkRouter": ("router", "e_score_correction_bias"),
    "DeepseekV4TopKRouter": ("router", "e_score_correction_bias"),
    "AfmoeTokenChoiceRouter": ("parent", "expert_bias"),
}
# Softmax top-K routers without a bias: class name -> whether gates are always renormalised
# and whether they are cast back to the logits' dtype (as each original forward does).
PATCHABLE = {
    "Qwen2MoeTopKRouter": {"always_norm": False, "cast": True},
    "Qwen3MoeTopKRouter": {"always_norm": False, "cast": True},
    "OlmoeTopKRouter": {"always_norm": False, "cast": True},
    "MixtralTopKRouter": {"always_norm": True, "cast": False},
}
# Routers that select by something other than scores (a token-id table): not balanced.
SKIPPED = ("DeepseekV4HashRouter",)
BIAS_NAME = "alflb_bias"


@dataclass(eq=False)
class RouterSite:
    """One MoE layer's router and the routing semantics it implements.

    Attributes
    ----------
    name : str
        The router's qualified module name (``model.layers.0.mlp.gate``).
    router : torch.nn.Module
        The module that returns ``(logits_TE, gates_TK, topk_TK)``.
    holder : torch.nn.Module
        The module that owns the bias tensor (the router, or Afmoe's MoE block).
    bias_name : str
        The attribute of ``holder`` holding the bias ``(E,)``.
    native : bool
        True if the architecture itself adds the bias (False: added by :func:`add_bias`).
    score_func : str
        ``"sigmoid"``, ``"softmax"`` or another activation name (DeepseekV4).
    k, n_experts, n_group, topk_group : int
        Top-K, experts, expert groups and groups kept (1 and 1 without group limiting).
    route_scale : float
        The factor applied to the gate weights.
    normalize : bool
        Whether the gates are renormalised over the selected experts.
    """

    name: str
    router: Any
    holder: Any
    bias_name: str | None
    native: bool
    score_func: str
    k: int
    n_experts: int
    n_group: int = 1
    topk_group: int = 1
    route_scale: float = 1.0
    normalize: bool = True

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias tensor routing uses now, ``(E,)``; None if the router has none yet."""
        if self.bias_name is None:
            return None
        return getattr(self.holder, self.bias_name, None)

    def scores(self, logits_TE: torch.Tensor) -> torch.Tensor:
        """The router scores ``gamma`` from its logits, in fp32, ``(T, E)``."""
        logits_TE = logits_TE.float()
        if self.score_func == "sigmoid":
            return torch.sigmoid(logits_TE)
        if self.score_func == "softmax":
            return torch.softmax(logits_TE, dim=-1)
        return self.router.score_fn(logits_TE)

    def semantics(self) -> dict[str, Any]:
        """The routing semantics as a JSON-ready dict (for trace metadata and reports)."""
        return {
            "router_class": type(self.router).__name__, "k": self.k, "n_experts": self.n_experts,
            "score_func": self.score_func, "n_group": self.n_group, "topk_group": self.topk_group,
            "route_scale": self.route_scale, "normalize_gates": self.normalize,
            "bias": "native" if self.native else ("added" if self.bias_name else "none"),
        }


def _site(name: str, module: Any, parent: Any, config: Any) -> RouterSite | None:
    cls = type(module).__name__
    if cls in NATIVE_BIAS:
        where, buffer = NATIVE_BIAS[cls]
        holder = module if where == "router" else parent
        if cls == "DeepseekV3TopkRouter":
            return RouterSite(name, module, holder, buffer, True, "sigmoid", module.top_k,
                              module.num_experts, int(module.num_group), int(module.topk_group),
                              float(module.routed_scaling_factor), bool(module.norm_topk_prob))
        if cls == "DeepseekV4TopKRouter":
            return RouterSite(name, module, holder, buffer, True, str(config.scoring_func),
                              module.top_k, module.num_experts,
                              route_scale=float(module.routed_scaling_factor))
        return RouterSite(name, module, holder, buffer, True, "sigmoid", module.top_k,
                          module.num_experts, route_scale=float(module.route_scale))
    if cls in PATCHABLE:
        has = hasattr(module, BIAS_NAME)
        normalize = PATCHABLE[cls]["always_norm"] or bool(module.norm_topk_prob)
        return RouterSite(name, module, module, BIAS_NAME if has else None, False, "softmax",
                          module.top_k, module.num_experts, normalize=normalize)
    return None


def find_routers(model: Any) -> list[RouterSite]:
    """Every score-routed MoE router of a transformers model, in layer order.

    Raises :class:`~alflb.errors.InvalidInputError` when none is found, naming the
    supported router classes. Hash-routed layers (DeepseekV4's first layers) are skipped.
    """
    config = getattr(model, "config", None)
    parents = {id(child): mod for mod in model.modules() for child in mod.children()}
    sites = []
    for name, module in model.named_modules():
        site = _site(name, module, parents.get(id(module)), config)
        if site is not None:
            sites.append(site)
    if not sites:
        supported = ", ".join(sorted([*NATIVE_BIAS, *PATCHABLE]))
        raise InvalidInputError(
            f"no supported MoE router in {type(model).__name__}; supported router classes: {supported}"
        )
    return sites


def _biased_softmax_forward(self: Any, hidden_states: torch.Tensor):
    # Same computation as the architecture's own forward, with the bias in selection only.
    x_TD = hidden_states.reshape(-1, self.hidden_dim)
    logits_TE = F.linear(x_TD, self.weight)  # (T, E)
    probs_TE = torch.softmax(logits_TE, dtype=torch.float, dim=-1)  # (T, E) fp32
    bias_E = getattr(self, BIAS_NAME).float()
    with torch.no_grad():
        select_TE = probs_TE * bias_E if self.alflb_bias_mode == "mul" else probs_TE + bias_E
        topk_TK = torch.topk(select_TE, self.top_k, dim=-1).indices  # (T, K)
    gates_TK = probs_TE.gather(1, topk_TK)  # (T, K) unbiased scores
    if self.alflb_always_norm or self.norm_topk_prob:
        gates_TK = gates_TK / gates_TK.sum(dim=-1, keepdim=True)
    if self.alflb_cast:
        gates_TK = gates_TK.to(logits_TE.dtype)
    return logits_TE, gates_TK, topk_TK


def add_bias(site: RouterSite, mode: str = "add") -> RouterSite:
    """Give a bias-free softmax router an fp32 selection bias (in place); returns the site.

    ``mode`` is ``"add"`` (select top-K of ``scores + bias``, bias starts at 0) or ``"mul"``
    (``scores * bias``, starts at 1). Native routers accept only ``"add"``.
    """
    if mode not in ("add", "mul"):
        raise InvalidInputError(f"mode must be 'add' or 'mul', got {mode!r}")
    if site.native:
        if mode != "add":
            raise InvalidInputError(
                f"{type(site.router).__name__} adds its bias to the scores; a multiplicative rule "
                "cannot drive it"
            )
        return site
    router = site.router
    if not hasattr(router, BIAS_NAME):
        start = 1.0 if mode == "mul" else 0.0
        device = router.weight.device
        router.register_buffer(BIAS_NAME, torch.full((site.n_experts,), start, device=device))
        opts = PATCHABLE[type(router).__name__]
        router.alflb_always_norm, router.alflb_cast = opts["always_norm"], opts["cast"]
        router.forward = types.MethodType(_biased_softmax_forward, router)
    router.alflb_bias_mode = mode
    site.bias_name = BIAS_NAME
    return site
