"""The router audit: every check passes on correct routers and fails on its mutant.

The mutants are small routers each carrying one bug users have hit (docs/theory.md section 8):
the bias in the gate weights, masked groups filled with 0, the bias kept in bf16, a
checkpoint that drops the bias, loads counted under recomputation or in eval, a
reversed update sign, a bias that never reaches selection. Keeping them here makes a
check that turns vacuous fail the suite.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from alflb.integrations._scope import in_recomputation
from alflb.integrations.audit import CHECKS, AlflbModelAdapter, RouterAdapter, audit

E, K, D, G, KG = 8, 2, 16, 4, 2


class ToyRouter(nn.Module):
    """Sigmoid scores, group-limited top-K of scores + bias, sign-rule update; ``bug`` breaks one rule."""

    def __init__(self, bug: str | None = None) -> None:
        super().__init__()
        self.bug = bug
        self.weight = nn.Parameter(torch.randn(E, D, generator=torch.Generator().manual_seed(1)))
        self.register_buffer("bias", torch.zeros(E), persistent=bug != "drop_bias")
        self.register_buffer("load", torch.zeros(E, dtype=torch.int64), persistent=False)

    def _apply(self, fn, recurse=True):
        before = self.bias
        out = super()._apply(fn, recurse)
        if self.bug != "bf16_bias" and self.bias.dtype != torch.float32:
            self.bias = before.to(device=self.bias.device)
        return out

    def forward(self, x_TD):
        scores_TE = torch.sigmoid(x_TD.float() @ self.weight.float().T)  # (T, E)
        biased_TE = scores_TE if self.bug == "ignore_bias" else scores_TE + self.bias
        grouped = biased_TE.detach().view(-1, G, E // G)
        keep = grouped.topk(2, dim=-1).values.sum(-1).topk(KG, dim=-1).indices
        drop = torch.ones(grouped.shape[:2], dtype=torch.bool).scatter_(1, keep, False)
        fill = 0.0 if self.bug == "zero_mask" else float("-inf")
        topk_TK = grouped.masked_fill(drop[..., None], fill).view(-1, E).topk(K, dim=-1).indices
        counting = {"count_recompute": self.training, "count_eval": not in_recomputation()}.get(
            self.bug, self.training and not in_recomputation())
        if counting:
            self.load += torch.bincount(topk_TK.reshape(-1), minlength=E)
        gate_src = scores_TE + self.bias if self.bug == "bias_in_gates" else scores_TE
        gates_TK = gate_src.gather(1, topk_TK)
        gates_TK = gates_TK / gates_TK.sum(-1, keepdim=True)
        return topk_TK, gates_TK

    @torch.no_grad()
    def update(self, load_E, u=1e-3):
        sign = -1.0 if self.bug == "reversed_sign" else 1.0
        self.bias += sign * u * torch.sign(load_E.float().mean() - load_E.float())


class ToyAdapter(RouterAdapter):
    """The small adapter a user writes to audit their own router."""

    k, n_experts, d_model, n_group, topk_group = K, E, D, G, KG

    def __init__(self, router: ToyRouter) -> None:
        self.module = router
        self.name = f"toy router ({router.bug or 'correct'})"

    def route(self, x_TD):
        return self.module(x_TD)

    def get_bias(self):
        return self.module.bias

    def set_bias(self, bias_E):
        with torch.no_grad():
            self.module.bias.copy_(bias_E)

    def loads(self):
        return self.module.load

    def reset_loads(self):
        self.module.load.zero_()

    def update(self, load_E):
        self.module.update(load_E)
        return self.module.bias


MUTANTS = {
    "ignore_bias": "bias_in_selection",
    "bias_in_gates": "gates_selection_only",
    "zero_mask": "masked_groups_neg_inf",
    "bf16_bias": "bias_fp32_under_cast",
    "drop_bias": "bias_in_checkpoint",
    "count_recompute": "counts_once",
    "count_eval": "counts_once",
    "reversed_sign": "update_direction",
}


def failing(report):
    return {c.name for c in report.checks if c.status == "fail"}


def test_correct_toy_router_passes_every_check():
    report = audit(ToyAdapter(ToyRouter()))
    assert report.success, report.to_text()
    assert [c.name for c in report.checks] == list(CHECKS)
    assert {c.status for c in report.checks} == {"pass"}


@pytest.mark.parametrize("bug", sorted(MUTANTS))
def test_each_mutant_fails_exactly_its_check(bug):
    report = audit(ToyAdapter(ToyRouter(bug)))
    assert not report.success
    assert failing(report) == {MUTANTS[bug]}, report.to_text()


def test_every_check_has_a_mutant():
    assert set(MUTANTS.values()) == set(CHECKS)


def test_evidence_names_the_numbers():
    report = audit(ToyAdapter(ToyRouter("bf16_bias")))
    cast = next(c for c in report.checks if c.name == "bias_fp32_under_cast")
    assert "bfloat16" in cast.evidence and cast.data["max_change"] > 0
    counts = next(c for c in audit(ToyAdapter(ToyRouter("count_recompute"))).checks if c.name == "counts_once")
    assert counts.data["counted"]["checkpoint non-reentrant"] == 2 * 64 * K
    assert counts.data["counted"]["checkpoint reentrant"] == 2 * 64 * K
    assert json.loads(report.to_json())["success"] is False


def test_audit_leaves_the_router_untouched():
    router = ToyRouter()
    router.bias += 0.01
    audit(ToyAdapter(router))
    torch.testing.assert_close(router.bias, torch.full((E,), 0.01))
    assert router.bias.dtype == torch.float32 and int(router.load.sum()) == 0


@pytest.fixture(scope="module")
def alflb_report():
    from alflb.model import DeepSeekMoE, get_preset

    torch.manual_seed(0)
    model = DeepSeekMoE(get_preset("tiny", n_groups=4, topk_groups=2, score_func="sigmoid"))
    return audit(AlflbModelAdapter(model))


def test_alflb_model_passes_the_bias_checks(alflb_report):
    statuses = {c.name: c.status for c in alflb_report.checks}
    assert {n: s for n, s in statuses.items() if n != "counts_once"} == {
        n: "pass" for n in CHECKS if n != "counts_once"}, alflb_report.to_text()


def test_alflb_model_counts_once_under_full_recomputation(alflb_report):
    """Found by this audit: the model counted a non-re-entrant recomputation a second time
    (its rule was ``training and is_grad_enabled()``); it now skips forwards that run
    inside a backward pass."""
    counts = next(c for c in alflb_report.checks if c.name == "counts_once")
    assert counts.status == "pass", counts.evidence
