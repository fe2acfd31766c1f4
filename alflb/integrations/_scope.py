"""Which forward passes count: the counting scope of docs/theory.md section 3, for hooks.

A router forward counts when it is a *real* forward of a training step: the module is
in training mode (unless the caller counts every mode) and the call is not an
activation-checkpointing recomputation. Both checkpointing variants recompute during
the backward pass (re-entrant: inside ``CheckpointFunction.backward``; non-re-entrant:
inside the unpack hook of a saved tensor), so a forward that runs while autograd
executes a graph task is a recomputation. Grad mode is no test: re-entrant
checkpointing runs the real forward under ``torch.no_grad``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["MaskCapture", "in_recomputation", "token_mask"]


from ..model.transformer import in_recomputation  # one test for the model and the hooks


def token_mask(attention_mask: Any, n_tokens: int) -> torch.Tensor | None:
    """The flattened ``(T,)`` boolean mask of real tokens, or None when it does not apply.

    Routers see the batch flattened to ``(B * S, D)`` in row-major order; a 2-D
    ``(B, S)`` attention mask flattens the same way. Other shapes give None (all count).
    """
    if attention_mask is None or not torch.is_tensor(attention_mask) or attention_mask.dim() != 2:
        return None
    if attention_mask.numel() != n_tokens:
        return None
    return attention_mask.reshape(-1).bool()


class MaskCapture:
    """A forward pre-hook on the whole model that keeps the last ``attention_mask``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.mask: torch.Tensor | None = None
        self.handles = [model.register_forward_pre_hook(self, with_kwargs=True),
                        model.register_forward_hook(self.clear)]

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not in_recomputation():
            self.mask = kwargs.get("attention_mask")

    def clear(self, module: Any, args: tuple, output: Any) -> None:
        # Routers called outside a model forward (or recomputed later) see no stale mask;
        # a re-entrant recomputation counts nothing, so it needs no mask.
        if not in_recomputation():
            self.mask = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
