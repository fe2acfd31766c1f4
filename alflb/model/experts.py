"""The routed experts of a DeepSeekMoE layer and their dispatch.

Three ways to run the same function (``ModelConfig.dispatch``):

``fused`` (``auto`` on the CPU)
    One autograd node for the whole routed FFN. Expert by expert it gathers the expert's
    tokens, runs ``W13``, the gated SwiGLU and ``W2``, and adds the result into the output;
    the backward walks the experts again the same way. Nothing of size ``(S, D)`` is ever
    materialised (the other two gather ``x`` into one and scatter one back, each way), the
    element-wise work runs on one expert's block while it is in cache, and only
    ``W13 x`` is saved for the backward. Outputs and gradients are bit-identical to
    ``grouped``'s (same GEMMs, the same element-wise arithmetic, the same order of
    accumulation; ``tests/test_model.py`` checks it). Why by hand: torch has no fused
    gather-GEMM-scatter for CPUs. At 64 experts top-8 the layer went from 1.17-1.33x a
    dense SwiGLU (``grouped``) to 1.11x, while its six GEMMs alone, into fresh outputs,
    cost 1.14-1.17x the dense ones either way (``benchmarks/moe_layer.py --gemms``).
``grouped`` (``auto`` elsewhere)
    Slots sorted by expert, one ``torch.nn.functional.grouped_mm`` per projection, forward
    and backward; the tokens are gathered with ``index_select`` and summed back with
    ``index_add``.
``loop``
    The same sorted slots with a Python loop of per-expert matmuls under autograd.

Shape legend: ``T`` tokens, ``D`` model width, ``E`` experts, ``K`` experts per token,
``H`` one expert's hidden width, ``S`` or ``M`` routed token-slots (``T*K``), ``I``/``O``
a linear layer's input/output width.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

__all__ = ["RoutedExperts", "fused_experts", "grouped_linear", "looped_linear"]


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types: ``index_add`` sums those in float32 and rounds once, and the
    blockwise sums here must round where it does."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _expert_blocks(counts_E: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(e, start, stop)`` of every expert with at least one slot, in expert order."""
    ends = torch.cumsum(counts_E, 0).tolist()
    return [(e, s, t) for e, (s, t) in enumerate(zip([0, *ends[:-1]], ends)) if t > s]


class _FusedExperts(torch.autograd.Function):
    """The routed SwiGLU experts as one node: ``out[t] = sum_j g_tj W2_e (silu(a) * b)``,
    ``(a, b) = W13_e x_t``, computed one expert's block at a time (module docstring).

    The arithmetic is autograd's for the ``grouped`` graph, operation for operation:
    ``act = (silu(a) * b) * g``; backward ``dr = gy W2_e``, ``dg = sum_h dr (silu(a) b)``,
    ``dq = dr g``, ``db = dq silu(a)``, ``da = silu_backward(dq b, a)`` (torch's own
    derivative kernel), ``dW2_e = gy^T act``, ``dW13_e = [da db]^T x``, ``dx += [da db] W13_e``.
    """

    @staticmethod
    def forward(ctx, x_TD, w13_EOD, w2_EDH, gates_S, token_S, counts_E):
        H = w2_EDH.shape[2]
        blocks = _expert_blocks(counts_E)
        h13_SO = w13_EOD.new_empty((token_S.shape[0], 2 * H))  # W13 x of every slot, saved
        dtype = w13_EOD.dtype  # the compute dtype; x keeps its own (its gradient too)
        acc = _accumulator_dtype(dtype)
        out_TD = x_TD.new_zeros(x_TD.shape, dtype=acc)
        for e, s, t in blocks:
            tok = token_S[s:t]
            h = torch.mm(x_TD.index_select(0, tok).to(dtype), w13_EOD[e].t(), out=h13_SO[s:t])  # (n, 2H)
            act = F.silu(h[:, :H]).mul_(h[:, H:]).mul_(gates_S[s:t, None])  # (n, H)
            out_TD.index_add_(0, tok, torch.mm(act, w2_EDH[e].t()).to(acc))
        ctx.blocks = blocks
        ctx.save_for_backward(x_TD, w13_EOD, w2_EDH, gates_S, token_S, h13_SO)
        return out_TD.to(dtype)

    @staticmethod
    def backward(ctx, grad_TD):
        x_TD, w13_EOD, w2_EDH, gates_S, token_S, h13_SO = ctx.saved_tensors
        need_x, need_w13, need_w2, need_g = ctx.needs_input_grad[:4]
        grad_TD = grad_TD.contiguous()
        H = w2_EDH.shape[2]
        every = len(ctx.blocks) == w13_EOD.shape[0]  # no expert without slots: nothing to zero
        gx = torch.zeros_like(x_TD, dtype=_accumulator_dtype(x_TD.dtype)) if need_x else None
        gw13 = (torch.empty_like if every else torch.zeros_like)(w13_EOD) if need_w13 else None
        gw2 = (torch.empty_like if every else torch.zeros_like)(w2_EDH) if need_w2 else None
        gg = torch.empty_like(gates_S) if need_g else None
        for e, s, t in ctx.blocks:
            tok = token_S[s:t]
            h = h13_SO[s:t]
            a, b, g = h[:, :H], h[:, H:], gates_S[s:t, None]
            p = F.silu(a)
            q = p * b
            gy = grad_TD.index_select(0, tok)  # (n, D)
            if need_w2:
                torch.mm(gy.t(), q * g, out=gw2[e])
            if not (need_x or need_w13 or need_g):
                continue
            dr = torch.mm(gy, w2_EDH[e])  # (n, H): gradient of act
            if need_g:
                torch.sum(dr * q, dim=1, out=gg[s:t])
            if not (need_x or need_w13):
                continue
            dq = dr * g
            dh = torch.empty_like(h)  # (n, 2H): [da db]
            torch.mul(dq, p, out=dh[:, H:])
            torch.ops.aten.silu_backward(dq.mul_(b), a, grad_input=dh[:, :H])
            if need_w13:
                torch.mm(dh.t(), x_TD.index_select(0, tok).to(dh.dtype), out=gw13[e])
            if need_x:
                gx.index_add_(0, tok, torch.mm(dh, w13_EOD[e]).to(gx.dtype))
        return None if gx is None else gx.to(x_TD.dtype), gw13, gw2, gg, None, None


def fused_experts(x_TD: torch.Tensor, w13_EOD: torch.Tensor, w2_EDH: torch.Tensor, gates_S: torch.Tensor,
                  token_S: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
    """The routed experts' output ``(T, D)`` for slots sorted by expert (``dispatch="fused"``).

    ``token_S``/``gates_S``: the token and gate of each slot in expert order, ``counts_E``
    the slots per expert. Under autocast, runs in the autocast dtype like ``grouped``.
    """
    dev = x_TD.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x_TD.dtype
    with torch.autocast(device_type=dev, enabled=False):
        return _FusedExperts.apply(x_TD, w13_EOD.to(dtype), w2_EDH.to(dtype), gates_S.to(dtype), token_S, counts_E)


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
        gates_S = gates_TK.reshape(-1).index_select(0, order_S)  # (S,) gates in expert order
        if self.dispatch == "fused" or (self.dispatch == "auto" and x_TD.device.type == "cpu"):
            return fused_experts(x_TD, self.w13, self.w2, gates_S, token_S, counts_E)
        # Gather by index_select (its backward is one index_add_) and scatter back with
        # index_add (its backward is one index_select): two (S, D) passes each way.
        x_SD = x_TD.index_select(0, token_S)  # (S, D) tokens in expert order
        a, b = self._linear(x_SD, self.w13, counts_E).chunk(2, dim=-1)  # (S, H) each
        # The gate multiplies the expert's output; W2 is linear, so it is applied to the
        # narrower hidden activation instead: g * W2 h = W2 (g h).
        gates_S1 = gates_S.unsqueeze(1).to(a.dtype)  # (S, 1)
        y_SD = self._linear(F.silu(a) * b * gates_S1, self.w2, counts_E)  # (S, D) expert order
        out_TD = torch.zeros((T, D), dtype=y_SD.dtype, device=y_SD.device)
        return out_TD.index_add(0, token_S, y_SD)  # (T, D) sum over each token's K experts


# --------------------------------------------------------------------------- router
