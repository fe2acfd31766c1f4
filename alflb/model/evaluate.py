r"""Validation of the model: loss, perplexity, bits per byte and ``MaxVio_global``.

Shape legend: ``B`` windows, ``T`` positions, ``L`` MoE layers, ``E`` experts.

The loss is the mean next-byte cross-entropy in nats over every predicted position of
the validation windows; ``ppl = exp(loss)``, ``bpb = loss / ln 2``. The loads
``A_{lk}`` are the validation set's routed counts summed per MoE layer (eval mode: the
routers count nothing into their training counters), and

.. math:: \mathrm{MaxVio}_{\text{global}, l} = \frac{\max_k A_{lk} - \bar A_l}{\bar A_l},

reported averaged over MoE layers ([W]).

With data parallelism (:func:`evaluate_sharded`) rank ``r`` evaluates windows
``r, r + W, ...``; the loss sums and loads are summed over ranks (one ``all_reduce`` of
:class:`~alflb.model.distributed.DistContext`), so every rank holds the same result.

References
----------
.. [W] L. Wang et al., arXiv:2408.15664 (2024): MaxVio_global.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..metrics import max_violation
from .distributed import DistContext
from .transformer import DeepSeekMoE

__all__ = ["EvalResult", "autocast", "evaluate", "evaluate_sharded"]


@dataclass(frozen=True)
class EvalResult:
    """Validation metrics: mean next-byte cross-entropy (nats), perplexity, bits per byte,
    the validation set's summed loads per MoE layer ``(L, E)``, and MaxVio_global."""

    loss: float
    ppl: float
    bpb: float
    loads_LE: np.ndarray
    maxvio_global_L: np.ndarray

    @classmethod
    def from_totals(cls, loss: float, loads_LE: np.ndarray) -> EvalResult:
        """The result of a mean loss (nats) and the summed ``(L, E)`` loads.

        A loss too large for ``exp`` has perplexity ``inf`` (reported as such, not an error).

        >>> EvalResult.from_totals(1e6, np.ones((1, 4), np.int64)).ppl
        inf
        """
        ppl = float("inf") if loss > 709.0 else math.exp(loss)  # exp overflows a double past ~709.78
        return cls(loss, ppl, loss / math.log(2), loads_LE, np.atleast_1d(max_violation(loads_LE)))

    @property
    def maxvio_global(self) -> float:
        """MaxVio_global averaged over MoE layers."""
        return float(np.mean(self.maxvio_global_L))


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing on CPU (the router and its bias stay fp32 anyway)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def evaluate(model: DeepSeekMoE, windows: torch.Tensor, batch_size: int = 32,
             device: torch.device | str = "cpu") -> EvalResult:
    """Validation loss and ``MaxVio_global`` of ``windows`` ``(B, T + 1)`` (eval mode: nothing is counted)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    E = model.cfg.n_routed_experts
    loads_LE = torch.zeros(model.cfg.n_moe_layers, E, dtype=torch.int64)
    total, n = 0.0, 0
    try:
        for chunk in windows.split(batch_size):
            chunk = chunk.to(device)
            x, y = chunk[:, :-1], chunk[:, 1:]  # (b, T) each
            with autocast(device):
                out = model(x, y)
            total += float(out.loss) * y.numel()
            n += y.numel()
            for i, r in enumerate(out.routing):
                loads_LE[i] += torch.bincount(r.topk_TK.reshape(-1), minlength=E).cpu()
    finally:
        model.train(was_training)
    return EvalResult.from_totals(total / n, loads_LE.numpy())


def evaluate_sharded(model: DeepSeekMoE, windows: torch.Tensor, batch_size: int,
                     device: torch.device, ctx: DistContext) -> EvalResult:
    """:func:`evaluate` on windows ``r, r + W, ...`` of each rank, reduced: every rank gets the same result.

    The loss is the token-weighted mean over all windows (equal to the single-process value
    up to the order of the float sums); the loads are summed exactly.
    """
    if not ctx.enabled:
        return evaluate(model, windows, batch_size, device)
    mine = windows[ctx.rank::ctx.world_size]
    n_layers, E = model.cfg.n_moe_layers, model.cfg.n_routed_experts
    n_tok = mine.shape[0] * (windows.shape[1] - 1)
    if mine.shape[0]:
        res = evaluate(model, mine, batch_size, device)
        loss_sum, loads_LE = res.loss * n_tok, res.loads_LE
    else:
        loss_sum, loads_LE = 0.0, np.zeros((n_layers, E), dtype=np.int64)
    packed = torch.cat([torch.as_tensor(loads_LE, dtype=torch.float64).reshape(-1),
                        torch.tensor([loss_sum, float(n_tok)], dtype=torch.float64)]).to(ctx.device)
    packed = ctx.all_reduce(packed, "the all-reduce of the evaluation").cpu()
    loads = packed[:-2].round().to(torch.int64).view(n_layers, E).numpy()
    return EvalResult.from_totals(float(packed[-2] / packed[-1]), loads)
