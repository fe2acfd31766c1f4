r"""A conformance kit for MoE router implementations of a selection-only bias.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` top-k, ``D`` model width.

Sign convention: the router adds the bias ``b`` to the scores for top-K selection only;
an overloaded expert's bias goes down. The audit checks the semantic rules of
docs/theory.md sections 3, 7 and 8 on a router through a :class:`RouterAdapter`, each with evidence:

==========================  ==================================================================
check                       passes when
==========================  ==================================================================
``bias_in_selection``       a large bias on one expert makes every token select it
``gates_selection_only``    gates are unchanged when the bias changes but selection does not
                            (a common shift of every bias, and a small random bias)
``masked_groups_neg_inf``   selection is unchanged when every bias shifts by the same
                            negative constant (0-filled masked groups fail it)
``bias_fp32_under_cast``    after ``.to(torch.bfloat16)`` and a forward, the bias routing
                            uses is fp32 and exactly the value set before
``bias_in_checkpoint``      a ``state_dict`` save/load round trip restores the bias, fp32
``counts_once``             loads of a training forward + backward are counted once, also
                            under activation checkpointing (both variants), none in eval
``update_direction``        an update after an overloaded batch lowers that expert's bias
                            and raises an underloaded one's
==========================  ==================================================================

A check the router cannot take (no bias, no load counting, no update) is ``"n/a"``.

>>> import torch
>>> from alflb.model import DeepSeekMoE, get_preset
>>> report = audit(AlflbModelAdapter(DeepSeekMoE(get_preset("tiny"))))
>>> report.status("gates_selection_only")
'pass'
"""

from __future__ import annotations

import copy
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

__all__ = ["AlflbModelAdapter", "AuditReport", "CheckResult", "RouterAdapter",
           "TransformersAdapter", "audit", "audit_architecture"]

CHECKS = ("bias_in_selection", "gates_selection_only", "masked_groups_neg_inf",
          "bias_fp32_under_cast", "bias_in_checkpoint", "counts_once", "update_direction")


class RouterAdapter:
    """What the audit needs from one router. Subclass it to audit any module.

    Attributes to set: ``name``, ``k``, ``n_experts``, ``d_model``, ``n_group`` and
    ``topk_group`` (1 without group limiting) and ``module`` (what ``.to()`` and
    ``state_dict`` apply to). Methods to implement: :meth:`route`, :meth:`get_bias`,
    :meth:`set_bias`; optionally :meth:`loads`/:meth:`reset_loads` (the router counts
    loads) and :meth:`update` (an update rule drives the bias).
    """

    name = "router"
    k = n_experts = d_model = 0
    n_group = topk_group = 1
    module: nn.Module

    def route(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the router (training mode as set): ``(topk_TK, gates_TK)``; gates differentiable."""
        raise NotImplementedError

    def get_bias(self) -> torch.Tensor | None:
        """The bias tensor the router will use, ``(E,)``, or None if it has none."""
        raise NotImplementedError

    def set_bias(self, bias_E: torch.Tensor) -> None:
        raise NotImplementedError

    def loads(self) -> torch.Tensor | None:
        """Loads counted since :meth:`reset_loads`, ``(E,)``; None if the router counts none."""
        return None

    def reset_loads(self) -> None:
        pass

    def update(self, load_E: torch.Tensor) -> torch.Tensor | None:
        """Apply one update as after a batch with loads ``load_E``; the new bias (None: no rule)."""
        return None

    def clone(self) -> RouterAdapter:
        """An independent copy (the audit mutates copies, never the router given)."""
        return copy.deepcopy(self)


class TransformersAdapter(RouterAdapter):
    """One MoE layer of a transformers model (with or without an alflb balancer).

    Routing runs the whole MoE block (so hooks on it apply) and captures the router's
    ``(logits, gates, topk)`` with a forward hook.
    """

    def __init__(self, model: nn.Module, layer: int = 0) -> None:
        from ._arch import find_routers

        self.module, self.layer = model, layer
        self.site = find_routers(model)[layer]
        self.block = next(m for m in model.modules() if any(c is self.site.router for c in m.children()))
        self.balancer = getattr(model, "alflb_balancer", None)
        self.name = f"{type(model).__name__}.{self.site.name}"
        self.k, self.n_experts = self.site.k, self.site.n_experts
        self.n_group, self.topk_group = self.site.n_group, self.site.topk_group
        self.d_model = int(model.config.hidden_size)

    def route(self, x_TD):
        seen: list[Any] = []
        handle = self.site.router.register_forward_hook(lambda m, a, out: seen.append(out))
        try:
            dtype = next(self.block.parameters()).dtype
            self.block(x_TD[None].to(dtype))
        finally:
            handle.remove()
        return seen[-1][2].reshape(-1, self.k), seen[-1][1].reshape(-1, self.k)

    def get_bias(self):
        return self.site.bias

    def set_bias(self, bias_E):
        if self.balancer is not None:
            self.balancer.bias_LE[self.layer] = bias_E.float()
            self.balancer._push()
        else:
            with torch.no_grad():
                self.site.bias.copy_(bias_E)

    def loads(self):
        return None if self.balancer is None else self.balancer.load_LE[self.layer]

    def reset_loads(self):
        if self.balancer is not None:
            self.balancer.load_LE.zero_()

    def update(self, load_E):
        if self.balancer is None:
            return None
        self.balancer.load_LE.zero_()
        self.balancer.load_LE[self.layer] = load_E
        self.balancer.step()
        return self.site.bias


class AlflbModelAdapter(RouterAdapter):
    """One router of :class:`alflb.model.transformer.DeepSeekMoE`; updates by its trainer's balancer."""

    def __init__(self, model: nn.Module, layer: int = 0, rule: str = "sign", u: float = 1e-3) -> None:
        from ..model.balancing import BalanceConfig, Balancer

        self.module, self.layer = model, layer
        self.router = model.routers()[layer]
        self.balancer = Balancer(BalanceConfig(mode=rule, u=u), model)
        self.name = f"alflb DeepSeekMoE router {layer}"
        self.k, self.n_experts = self.router.top_k, self.router.n_experts
        self.n_group, self.topk_group = self.router.n_groups, self.router.topk_groups
        self.d_model = int(model.cfg.d_model)

    def route(self, x_TD):
        out = self.router(x_TD)
        return out.topk_TK, out.gates_TK

    def get_bias(self):
        return self.router.expert_bias

    def set_bias(self, bias_E):
        with torch.no_grad():
            self.router.expert_bias.copy_(bias_E)

    def loads(self):
        return self.router.load_count

    def reset_loads(self):
        self.router.reset_load_count()

    def update(self, load_E):
        loads_LE = torch.zeros(len(self.module.routers()), self.n_experts, dtype=torch.int64)
        loads_LE[:] = load_E.sum() // self.n_experts  # other layers balanced: unchanged
        loads_LE[self.layer] = load_E
        self.balancer.end_step(self.module, loads_LE=loads_LE)
        return self.router.expert_bias


@dataclass(frozen=True)
class CheckResult:
    """One audit check: ``status`` is ``"pass"``, ``"fail"`` or ``"n/a"``; ``evidence`` says why."""

    name: str
    status: str
    evidence: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditReport:
    """All checks of one router; ``success`` when none failed."""

    router: str
    checks: tuple[CheckResult, ...]

    @property
    def success(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def status(self, name: str) -> str:
        return next(c.status for c in self.checks if c.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {"router": self.router, "success": self.success, "checks": [asdict(c) for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    def to_text(self) -> str:
        lines = [f"audit of {self.router}: {'PASS' if self.success else 'FAIL'}"]
        lines += [f"  {c.status:>4}  {c.name:<22} {c.evidence}" for c in self.checks]
        return "\n".join(lines)


def _sets(topk_TK: torch.Tensor) -> torch.Tensor:
    return topk_TK.sort(dim=-1).values


def _gates_by_expert(topk_TK: torch.Tensor, gates_TK: torch.Tensor) -> torch.Tensor:
    order = topk_TK.argsort(dim=-1)
    return gates_TK.float().gather(1, order)


def _route(a: RouterAdapter, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        topk_TK, gates_TK = a.route(x_TD)
    return topk_TK.detach(), gates_TK.detach()


def _check_bias_in_selection(a, x_TD):
    if a.get_bias() is None:
        return CheckResult("bias_in_selection", "n/a", "the router has no selection bias")
    bias = torch.zeros(a.n_experts)
    bias[a.n_experts - 1] = 10.0
    a.set_bias(bias)
    topk, _ = _route(a, x_TD)
    frac = float((topk == a.n_experts - 1).any(-1).float().mean())
    ok = frac == 1.0
    return CheckResult("bias_in_selection", "pass" if ok else "fail",
                       f"bias +10 on expert {a.n_experts - 1}: {frac:.0%} of tokens select it",
                       {"fraction": frac})


def _check_gates(a, x_TD):
    if a.get_bias() is None:
        return CheckResult("gates_selection_only", "n/a", "the router has no selection bias")
    a.set_bias(torch.zeros(a.n_experts))
    topk0, gates0 = _route(a, x_TD)
    worst, compared = 0.0, 0
    gen = torch.Generator().manual_seed(0)
    for bias in (torch.full((a.n_experts,), 0.25), 1e-3 * torch.randn(a.n_experts, generator=gen)):
        a.set_bias(bias)
        topk1, gates1 = _route(a, x_TD)
        same = (_sets(topk0) == _sets(topk1)).all(-1)
        if same.any():
            diff = (_gates_by_expert(topk0, gates0) - _gates_by_expert(topk1, gates1))[same].abs().max()
            worst, compared = max(worst, float(diff)), compared + int(same.sum())
    ok = compared > 0 and worst <= 1e-6
    return CheckResult("gates_selection_only", "pass" if ok else "fail",
                       f"bias changed (common shift +0.25, random 1e-3) on {compared} token routings with "
                       f"unchanged selection: largest gate change {worst:.3g}",
                       {"max_gate_change": worst, "tokens_compared": compared})


def _check_shift(a, x_TD):
    if a.get_bias() is None:
        return CheckResult("masked_groups_neg_inf", "n/a", "the router has no selection bias")
    a.set_bias(torch.zeros(a.n_experts))
    topk0, _ = _route(a, x_TD)
    a.set_bias(torch.full((a.n_experts,), -1.5))
    topk1, _ = _route(a, x_TD)
    changed = float((_sets(topk0) != _sets(topk1)).any(-1).float().mean())
    what = (f"groups ({a.topk_group} of {a.n_group} kept)" if a.n_group > 1 else "no groups")
    ok = changed == 0.0
    return CheckResult("masked_groups_neg_inf", "pass" if ok else "fail",
                       f"every bias shifted by -1.5 ({what}): selection changed for {changed:.0%} of tokens",
                       {"fraction_changed": changed, "grouped": a.n_group > 1})


def _check_cast(a, x_TD):
    if a.get_bias() is None:
        return CheckResult("bias_fp32_under_cast", "n/a", "the router has no selection bias")
    bias = 1e-3 * (1 + 1e-3 * torch.arange(a.n_experts, dtype=torch.float32))  # not bf16-exact
    a.set_bias(bias)
    a.module.to(torch.bfloat16)
    after_cast = a.get_bias().dtype
    note = ""
    try:
        _route(a, x_TD.to(torch.bfloat16))
    except RuntimeError as exc:  # some kernels refuse bf16 on this device: judge the cast alone
        note = f" (bf16 forward failed: {str(exc)[:60]})"
    used = a.get_bias()
    err = float((used.float().cpu() - bias).abs().max())
    ok = used.dtype == torch.float32 and err == 0.0
    return CheckResult("bias_fp32_under_cast", "pass" if ok else "fail",
                       f"after .to(torch.bfloat16): bias {str(after_cast).replace('torch.', '')}, at forward "
                       f"{str(used.dtype).replace('torch.', '')}, largest change {err:.3g}{note}",
                       {"dtype_after_cast": str(after_cast), "dtype_at_forward": str(used.dtype),
                        "max_change": err})


def _check_checkpoint(a, b):
    if a.get_bias() is None:
        return CheckResult("bias_in_checkpoint", "n/a", "the router has no selection bias")
    bias = 1e-3 * torch.arange(a.n_experts, dtype=torch.float32) - 2e-3
    a.set_bias(bias)
    buf = io.BytesIO()
    torch.save(a.module.state_dict(), buf)
    buf.seek(0)
    b.set_bias(torch.zeros(a.n_experts))
    try:
        b.module.load_state_dict(torch.load(buf, weights_only=True))
    except RuntimeError as exc:
        return CheckResult("bias_in_checkpoint", "fail", f"load_state_dict refused the checkpoint: {exc}"[:200])
    got = b.get_bias()
    err = float((got.float().cpu() - bias).abs().max())
    ok = got.dtype == torch.float32 and err == 0.0
    return CheckResult("bias_in_checkpoint", "pass" if ok else "fail",
                       f"state_dict round trip: bias {str(got.dtype).replace('torch.', '')}, largest change {err:.3g}",
                       {"max_change": err, "dtype": str(got.dtype)})


def _check_counts(a, x_TD):
    if a.loads() is None:
        return CheckResult("counts_once", "n/a", "the router counts no loads (attach a balancer)")
    expected = x_TD.shape[0] * a.k
    counted: dict[str, int] = {}

    def run(label, fn):
        a.reset_loads()
        x = x_TD.clone().requires_grad_(True)
        out = fn(x)
        if out is not None:
            out.float().sum().backward()
        counted[label] = int(a.loads().sum())

    a.module.train()
    run("plain", lambda x: a.route(x)[1])
    run("checkpoint non-reentrant", lambda x: checkpoint(lambda y: a.route(y)[1], x, use_reentrant=False))
    run("checkpoint reentrant", lambda x: checkpoint(lambda y: a.route(y)[1], x, use_reentrant=True))
    # torch stops a non-reentrant recomputation once the tensors backward needs exist
    # (early stop): counting placed after them escapes by luck. Recompute in full too.
    with set_checkpoint_early_stop(False):
        run("checkpoint non-reentrant, no early stop",
            lambda x: checkpoint(lambda y: a.route(y)[1], x, use_reentrant=False))
    a.module.eval()
    run("eval", lambda x: _no_output(_route(a, x)))
    a.module.train()
    want = {label: (0 if label == "eval" else expected) for label in counted}
    ok = counted == want
    return CheckResult("counts_once", "pass" if ok else "fail",
                       f"{x_TD.shape[0]} tokens x top-{a.k} = {expected}; counted "
                       + ", ".join(f"{k} {v}" for k, v in counted.items()),
                       {"counted": counted, "expected": want})


def _check_update(a):
    if a.get_bias() is None:
        return CheckResult("update_direction", "n/a", "the router has no selection bias")
    a.set_bias(torch.zeros(a.n_experts))
    before = a.get_bias().detach().float().clone()
    load = torch.full((a.n_experts,), 10, dtype=torch.int64)
    load[0], load[1] = 10 + 5 * (a.n_experts - 1) // 2, 5  # expert 0 overloaded, 1 underloaded
    load[2:] = (10 * a.n_experts - int(load[0]) - 5) // (a.n_experts - 2)
    after = a.update(load)
    if after is None:
        return CheckResult("update_direction", "n/a", "no update rule drives this bias")
    after = after.detach().float().cpu()
    d0, d1 = float(after[0] - before[0]), float(after[1] - before[1])
    ok = d0 < 0 < d1
    return CheckResult("update_direction", "pass" if ok else "fail",
                       f"overloaded expert 0 bias moved {d0:+.3g}, underloaded expert 1 moved {d1:+.3g}",
                       {"overloaded_delta": d0, "underloaded_delta": d1})


def audit(adapter: RouterAdapter, n_tokens: int = 64, seed: int = 0) -> AuditReport:
    """Run every check on copies of ``adapter``'s router; returns an :class:`AuditReport`."""
    gen = torch.Generator().manual_seed(seed)
    x_TD = torch.randn(n_tokens, adapter.d_model, generator=gen)
    checks = [
        _check_bias_in_selection(adapter.clone(), x_TD),
        _check_gates(adapter.clone(), x_TD),
        _check_shift(adapter.clone(), x_TD),
        _check_cast(adapter.clone(), x_TD),
        _check_checkpoint(adapter.clone(), adapter.clone()),
        _check_counts(adapter.clone(), x_TD),
        _check_update(adapter.clone()),
    ]
    return AuditReport(adapter.name, tuple(checks))


def audit_architecture(arch: str, balancer: bool = True, u: float = 1e-3, seed: int = 0) -> AuditReport:
    """Build a tiny random transformers model of ``arch`` and audit its first MoE router.

    With ``balancer`` an alflb sign-rule balancer is attached first (the configuration a
    user trains with); without it, the architecture is audited as transformers ships it.
    """
    from ..rules import make_rule
    from .transformers import attach_balancer, tiny_model

    model = tiny_model(arch, seed=seed)
    if balancer:
        attach_balancer(model, make_rule("sign", u=u))
    report = audit(TransformersAdapter(model), seed=seed)
    label = f"transformers {arch}" + (" + alflb balancer" if balancer else " (as shipped)")
    return AuditReport(label, report.checks)


def _no_output(_: Any) -> None:
    return None
