"""The balancer behind :func:`alflb.integrations.transformers.attach_balancer`.

Shape legend: ``L`` MoE layers, ``E`` experts, ``K`` top-k, ``T`` tokens.

Sign convention: the router adds the bias to the scores for selection only; an
overloaded expert's bias goes down.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError
from ..rules import RuleState, UpdateRule
from ._arch import RouterSite, add_bias
from ._scope import MaskCapture, in_recomputation, token_mask

__all__ = ["Balancer"]


class Balancer(nn.Module):
    """Drives every router's selection bias with an alflb update rule.

    Buffers (in the model's ``state_dict`` under ``alflb_balancer.``): ``bias_LE`` the fp32
    master biases, ``n_updates_L`` and (momentum rules) ``velocity_LE`` the rule states;
    ``load_LE`` (a plain tensor, not saved, not broadcast by DDP) the loads this rank
    counted since the last :meth:`step`.

    Call :meth:`step` once per optimiser step, after ``optimizer.step()`` (or pass
    :meth:`callback` to a ``transformers.Trainer``). Its bias update is the pure rule of
    :mod:`alflb.rules` on the global-batch loads (all-reduced under ``torch.distributed``);
    an overloaded expert's bias goes down.
    """

    def __init__(self, model: nn.Module, rule: UpdateRule, sites: list[RouterSite]) -> None:
        super().__init__()
        if not isinstance(rule, UpdateRule):
            raise InvalidInputError(f"rule must be an alflb UpdateRule (make_rule), got {rule!r}")
        caps = rule.capabilities()
        if caps.needs_scores:
            raise InvalidInputError(f"rule {rule.name!r} needs the batch's scores; attach_balancer "
                                    "drives rules that read loads only")
        self.rule, self.sites = rule, sites
        self.n_layers, self.n_experts = len(sites), sites[0].n_experts
        for s in sites:
            add_bias(s, caps.selection)
        start = torch.stack([s.bias.detach().float().cpu() for s in sites])  # (L, E)
        self.register_buffer("bias_LE", start)
        self.register_buffer("n_updates_L", torch.zeros(self.n_layers, dtype=torch.int64))
        state = rule.init_state(self.n_experts, like=start[0])
        self._momentum = state.velocity_E is not None
        if self._momentum:
            self.register_buffer("velocity_LE", torch.zeros(self.n_layers, self.n_experts))
        # A plain tensor, not a buffer: DDP re-broadcasts rank 0's buffers before a forward,
        # which would overwrite this rank's counts of earlier micro-batches.
        self.load_LE = torch.zeros(self.n_layers, self.n_experts, dtype=torch.int64)
        self.counted_forwards = 0
        self._mask = MaskCapture(model)
        self._handles = [s.router.register_forward_hook(functools.partial(self._count, i)) for i, s in enumerate(sites)]
        holders = {id(s.holder): s.holder for s in sites}
        self._handles += [h.register_forward_pre_hook(self._fp32_hook) for h in holders.values()]

    # -- keeping the biases fp32 and equal to the master
    def _push(self) -> None:
        """Write the fp32 master biases into the routers (re-creating any cast tensor)."""
        for layer, s in enumerate(self.sites):
            current = s.bias
            master = self.bias_LE[layer].to(current.device)
            if current.dtype == torch.float32:
                with torch.no_grad():
                    current.copy_(master)
            elif isinstance(current, nn.Parameter):
                s.holder._parameters[s.bias_name] = nn.Parameter(master.clone(), requires_grad=False)
            else:
                s.holder._buffers[s.bias_name] = master.clone()

    def _fp32_hook(self, module: Any, args: tuple) -> None:
        if any(s.bias.dtype != torch.float32 for s in self.sites if s.holder is module):
            self._push()

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) casts floating buffers: restore the master exactly, fp32.
        before = {name: buf for name, buf in self._buffers.items()}
        out = super()._apply(fn, recurse)
        for name, buf in before.items():
            now = self._buffers[name]
            if now is not None and now.dtype != buf.dtype:
                self._buffers[name] = buf.to(device=now.device)
        self.load_LE = self.load_LE.to(self.bias_LE.device)
        self._push()  # the routers were cast before this module (registered last)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "bias_LE" in state_dict:
            self._push()

    # -- counting
    def _count(self, layer: int, module: Any, args: tuple, output: Any) -> None:
        # A bound method (through functools.partial), not a closure: copy.deepcopy(model)
        # then gives the copy's hooks the copy's balancer.
        if not module.training or in_recomputation():
            return
        site = self.sites[layer]
        topk_TK = output[2].detach().reshape(-1, site.k)
        mask = token_mask(self._mask.mask, topk_TK.shape[0])
        if mask is not None:
            topk_TK = topk_TK[mask.to(topk_TK.device)]
        counts = torch.bincount(topk_TK.reshape(-1), minlength=site.n_experts)
        self.load_LE[layer] += counts.to(self.load_LE.device)
        self.counted_forwards += 1

    # -- the update
    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """One update from the loads counted since the last step; returns those loads ``(L, E)``.

        Layers that counted nothing keep their bias. Under ``torch.distributed`` the counts
        are summed over ranks first, so every rank applies the same update.
        """
        loads_LE = self.load_LE.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(loads_LE)
        for layer in range(self.n_layers):
            load_E = loads_LE[layer]
            total = int(load_E.sum())
            if total == 0:
                continue
            velocity = self.velocity_LE[layer].clone() if self._momentum else None
            state = RuleState(n_updates=int(self.n_updates_L[layer]), velocity_E=velocity)
            out = self.rule.update(self.bias_LE[layer].clone(), load_E.double(),
                                   total / self.n_experts, state)
            self.bias_LE[layer] = torch.as_tensor(out.bias_E, dtype=torch.float32)
            self.n_updates_L[layer] = out.state.n_updates
            if self._momentum:
                self.velocity_LE[layer] = torch.as_tensor(out.state.velocity_E, dtype=torch.float32)
        self._push()
        self.load_LE.zero_()
        return loads_LE.cpu()

    def biases(self) -> torch.Tensor:
        """The fp32 master biases ``(L, E)`` (router adds them; overloaded experts go down)."""
        return self.bias_LE.detach().clone()

    def detach(self) -> None:
        """Remove the hooks (the added bias buffers and patched forwards stay)."""
        for h in self._handles:
            h.remove()
        self._mask.remove()
        self._handles = []

    def callback(self) -> Any:
        """A ``transformers.TrainerCallback`` that calls :meth:`step` after each optimiser step."""
        return _callback_class()(self)


_CALLBACK: list[type] = []


def _callback_class() -> type:
    if not _CALLBACK:
        from transformers import TrainerCallback

        class BalancerCallback(TrainerCallback):
            """Runs :meth:`Balancer.step` at the end of every optimiser step."""

            def __init__(self, balancer: Balancer) -> None:
                self.balancer = balancer
                self.loads_NLE: list[np.ndarray] = []

            def on_step_end(self, args, state, control, **kwargs):
                self.loads_NLE.append(self.balancer.step().numpy())

        _CALLBACK.append(BalancerCallback)
    return _CALLBACK[0]
