"""The routed experts of a DeepSeekMoE layer and their dispatch (grouped GEMM or a loop).

Shape legend: ``T`` tokens, ``D`` model width, ``E`` experts, ``K`` experts per token,
``M`` routed token-slots (``T*K``), ``I``/``O`` a linear layer's input/output width.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

__all__ = ["RoutedExperts", "grouped_linear", "looped_linear"]


class _GroupedLinear(torch.autograd.Function):
    """``y[rows of group e] = x[rows of group e] @ w[e].T`` with ``grouped_mm`` both ways.

    ``torch.nn.functional.grouped_mm``'s own backward rejects CPU tensors in torch 2.13,
    so forward and both gradients are written out here (each is one grouped matmul).
    """

    @staticmethod
    def forward(ctx, x_MI: torch.Tensor, w_EOI: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x_MI, w_EOI, offs_E)
        return F.grouped_mm(x_MI, w_EOI.transpose(-2, -1), offs=offs_E)  # (M, O)

    @staticmethod
    def backward(ctx, grad_MO: torch.Tensor):
        x_MI, w_EOI, offs_E = ctx.saved_tensors
        grad_MO = grad_MO.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.grouped_mm(grad_MO, w_EOI, offs=offs_E)  # (M, I)
        if ctx.needs_input_grad[1]:
            grad_w = F.grouped_mm(grad_MO.t(), x_MI, offs=offs_E)  # (E, O, I)
        return grad_x, grad_w, None


def grouped_linear(x_MI: torch.Tensor, w_EOI: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` sorted by group (``counts_E`` rows each) times each group's ``w[e].T``."""
    offs_E = torch.cumsum(counts_E, 0).to(torch.int32)
    dtype = torch.get_autocast_dtype(x_MI.device.type) if torch.is_autocast_enabled(x_MI.device.type) else x_MI.dtype
    with torch.autocast(device_type=x_MI.device.type, enabled=False):
        return _GroupedLinear.apply(x_MI.to(dtype), w_EOI.to(dtype), offs_E)


def looped_linear(x_MI: torch.Tensor, w_EOI: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
    """The same as :func:`grouped_linear` with a Python loop over experts (the peer)."""
    # unbind, not w_EOI[e]: its backward stacks the E gradients once instead of adding E
    # full-size zero-padded tensors.
    outs = [xe @ w.t() for xe, w in zip(x_MI.split(counts_E.tolist(), dim=0), w_EOI.unbind(0))]
    return torch.cat(outs, dim=0)  # (M, O)


class RoutedExperts(nn.Module):
    """``E`` fine-grained SwiGLU experts, stored stacked for grouped matmuls.

    ``w13[e]`` is ``(2H, D)`` (gate and up, fused), ``w2[e]`` is ``(D, H)``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E, D, H = cfg.n_routed_experts, cfg.d_model, cfg.expert_hidden
        self.n_experts = E
        self.w13 = nn.Parameter(torch.empty(E, 2 * H, D))
        self.w2 = nn.Parameter(torch.empty(E, D, H))
        self.dispatch = cfg.dispatch
        self._grouped_failed = False

    def _linear(self, x_MI: torch.Tensor, w_EOI: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        use_grouped = self.dispatch == "grouped" or (self.dispatch == "auto" and not self._grouped_failed)
        if use_grouped:
            try:
                return grouped_linear(x_MI, w_EOI, counts_E)
            except RuntimeError as exc:  # e.g. a CUDA build whose grouped_mm rejects fp32
                if self.dispatch == "grouped":
                    raise
                warnings.warn(f"grouped_mm unavailable here ({exc}); using the per-expert loop", stacklevel=2)
                self._grouped_failed = True
        return looped_linear(x_MI, w_EOI, counts_E)

    def forward(self, x_TD: torch.Tensor, topk_TK: torch.Tensor, gates_TK: torch.Tensor) -> torch.Tensor:
        T, D = x_TD.shape
        K = topk_TK.shape[1]
        expert_S = topk_TK.reshape(-1)  # (S,) slots S = T*K; slot t*K + j is token t's j-th expert
        order_S = torch.argsort(expert_S, stable=True)  # slots grouped by expert id
        token_S = order_S // K  # (S,) the token of each sorted slot
        counts_E = torch.bincount(expert_S, minlength=self.n_experts)  # (E,)
        # Gather by index_select (its backward is one index_add_) and scatter back with
        # index_add (its backward is one index_select): two (S, D) passes each way.
        x_SD = x_TD.index_select(0, token_S)  # (S, D) tokens in expert order
        a, b = self._linear(x_SD, self.w13, counts_E).chunk(2, dim=-1)  # (S, H) each
        # The gate multiplies the expert's output; W2 is linear, so it is applied to the
        # narrower hidden activation instead: g * W2 h = W2 (g h).
        gates_S1 = gates_TK.reshape(-1).index_select(0, order_S).unsqueeze(1).to(a.dtype)  # (S, 1)
        y_SD = self._linear(F.silu(a) * b * gates_S1, self.w2, counts_E)  # (S, D) expert order
        out_TD = torch.zeros((T, D), dtype=y_SD.dtype, device=y_SD.device)
        return out_TD.index_add(0, token_S, y_SD)  # (T, D) sum over each token's K experts


# --------------------------------------------------------------------------- router
