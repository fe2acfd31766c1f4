r"""Load balancing for the model: auxiliary losses and the bias update of :mod:`alflb.rules`.

Shape legend: ``T`` tokens, ``B`` sequences, ``E`` experts, ``K`` experts per token,
``L`` MoE layers.

Modes (``BalanceConfig.mode``):

``none``
    No balancing: the bias stays 0, no loss.
``aux``
    Switch/GShard auxiliary loss per MoE layer, summed over layers,

    .. math:: \mathcal{L}_{\text{aux}} = \alpha\, E \sum_k f_k P_k, \qquad
        f_k = \frac{A_k}{K T}, \qquad P_k = \frac1T \sum_i \pi_{ik},

    with ``A_k`` the hard count of the micro-batch and ``pi`` the router probabilities:
    the softmax scores, or for sigmoid scores ``s_ik / sum_j s_ij`` (as [V3] normalises).
    Which experts ``A_k`` counts is the model's semantics (:mod:`alflb.semantics`): by
    default ([V3] eq. 18, Megatron-core) the top-K of the *unbiased* scores with no group
    limit; under ``semantics="alflb"`` the experts actually selected (biased,
    group-limited). With a zero bias and no groups the two coincide.
    ``alpha = 1e-3`` by default ([W]). Balanced routing gives the value ``alpha``.
``seq_aux``
    DeepSeek-V3's sequence-wise loss: the same per sequence, averaged over sequences;
    ``alpha = 1e-4`` by default ([V3]).
``global_aux``
    Global-batch loss [Q]: ``f_k`` from the counts summed over the micro-batches of the
    optimiser step so far and over data-parallel ranks (Megatron-core's implementation:
    the running count, which equals the global-batch count at the last micro-batch),
    ``P_k`` from the current micro-batch; ``alpha = 1e-3`` by default. The divisor is
    the semantics': all tokens counted so far (default), or Megatron's running count
    divided by the number of micro-batches so far and by the micro-batch's tokens (the
    two agree for equal micro-batches).
any rule of :mod:`alflb.rules` (``sign``, ``centred``, ``uniform``, ``decay``, ``momentum``,
``multiplicative``, ``frozen_tail``, ``quantile``, ...)
    The bias update. Loads are counted over the whole global batch (every micro-batch of
    the optimiser step, training mode only) and the rule runs once per optimiser step,
    after ``optimizer.step()``, outside autograd, as the same pure function the simulator
    uses, ``rule.update(bias_E, load_E, capacity_E, state)`` with the balanced capacity
    ``c_k = K T / E`` of the global batch (a float vector; the fp32 mean of the counts
    under the ``megatron`` and ``torchtitan`` semantics). ``seq_alpha > 0`` adds the
    complementary sequence-wise loss ([V3] uses both). Under a semantics that centres
    (``torchtitan``) every rule of the sign family (``sign``, ``frozen_tail`` of it, with
    any schedule) runs centred (:meth:`alflb.rules.UpdateRule.centred`); under ``megatron``, quantile
    balancing averages the per-micro-batch sweeps and works on the raw fp32 router
    logits: the routers select the top-K of ``logits + p`` and each sweep reads the
    micro-batch's logits (``quantile_input``); with data parallelism the sweeps and their
    number are summed over ranks by the injected ``reduce_sum`` (the plain mean over the
    global batch's micro-batches, as megatron-core averages over ranks). A rule whose score statistic is a sum
    (``reducible_scores``: ``histogram_quantile``) accumulates it per micro-batch
    (``rule.accumulate``), the accumulators are summed over data-parallel ranks by the
    injected ``reduce_sum`` (one reduction per optimiser step) and ``rule.finalise`` runs
    once; its ``micro_batch`` scope is then the trainer's micro-batches.

Sign convention: the router adds the bias; an overloaded expert's bias goes down. The
bias is an fp32 tensor, and the rule computes in fp32 (it keeps the bias's dtype).

References
----------
.. [W] L. Wang et al., arXiv:2408.15664 (2024), sections 2-3.
.. [V3] DeepSeek-AI, arXiv:2412.19437 (2024), sections 2.1.2 (bias rule, sequence-wise loss).
.. [Q] Z. Qiu et al., Demons in the Detail, arXiv:2501.11873 (global-batch loss).
.. Switch: W. Fedus et al., JMLR 2022; GShard: D. Lepikhin et al., ICLR 2021.

Examples
--------
>>> cfg = BalanceConfig(mode="aux")
>>> cfg.loss_alpha, cfg.rule_name
(0.001, None)
>>> BalanceConfig(mode="sign", u=1e-2).rule_name
'sign'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import rules as _rules
from ..errors import CorruptFileError, InvalidInputError, UnknownNameError
from ..semantics import Semantics, get_semantics
from .transformer import DeepSeekMoE, RouterOutput

__all__ = [
    "LOSS_MODES",
    "BalanceConfig",
    "Balancer",
    "averages_micro_batch_sweeps",
    "check_data_parallel",
    "router_probs",
    "sequence_aux_loss",
    "switch_aux_loss",
]

LOSS_MODES = ("none", "aux", "seq_aux", "global_aux")
_DEFAULT_ALPHA = {"aux": 1e-3, "seq_aux": 1e-4, "global_aux": 1e-3}


@dataclass(frozen=True, kw_only=True)
class BalanceConfig:
    """How the training run balances expert loads (see the module docstring)."""

    mode: str = "sign"  # none | aux | seq_aux | global_aux | any rule name of alflb.rules
    u: float = 1e-3  # step of rules that take `u` (sign, centred, multiplicative, momentum, ...)
    alpha: float | None = None  # loss coefficient; None: 1e-3 (aux, global_aux), 1e-4 (seq_aux)
    seq_alpha: float = 0.0  # complementary sequence-wise loss added to a bias rule (V3: 1e-4)
    rule_params: dict[str, Any] = field(default_factory=dict)  # further make_rule parameters

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str):
            raise InvalidInputError(f"balance mode must be a string, got {self.mode!r}")
        mode = self.mode.lower()
        object.__setattr__(self, "mode", mode)
        if mode not in LOSS_MODES:
            try:
                _rules.make_rule(mode, **self.rule_params)
            except UnknownNameError as exc:
                raise UnknownNameError(
                    f"unknown balance mode {self.mode!r}: use one of {', '.join(LOSS_MODES)} "
                    f"or a rule of alflb.rules ({', '.join(_rules.available_rules())})"
                ) from exc
        for name in ("u", "seq_alpha") + (("alpha",) if self.alpha is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise InvalidInputError(f"{name} must be a finite non-negative number, got {v!r}")
        if self.alpha is not None and mode not in _DEFAULT_ALPHA:
            raise InvalidInputError(f"alpha applies to the loss modes {sorted(_DEFAULT_ALPHA)}, not {mode!r}")
        if self.seq_alpha and mode in LOSS_MODES:
            raise InvalidInputError("seq_alpha (the complementary loss) goes with a bias rule, not a loss mode")

    @property
    def rule_name(self) -> str | None:
        """The :mod:`alflb.rules` name, or None for the loss modes and ``none``."""
        return None if self.mode in LOSS_MODES else self.mode

    @property
    def loss_alpha(self) -> float:
        """Coefficient of the mode's loss (0 for ``none`` and the rules)."""
        if self.mode not in _DEFAULT_ALPHA:
            return 0.0
        return _DEFAULT_ALPHA[self.mode] if self.alpha is None else float(self.alpha)

    def make_rule(self) -> _rules.UpdateRule | None:
        """The update rule; ``u`` sets its step when the rule declares ``u`` as its step parameter."""
        name = self.rule_name
        if name is None:
            return None
        rule = _rules.make_rule(name, **self.rule_params)
        if rule.capabilities().step_param == "u" and "u" not in self.rule_params:
            rule = rule.with_step(self.u)
        return rule

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------ losses


def router_probs(scores_TE: torch.Tensor) -> torch.Tensor:
    """Per-token probabilities ``pi_ik = s_ik / sum_j s_ij`` (the identity for softmax)."""
    return scores_TE / (scores_TE.sum(-1, keepdim=True) + 1e-20)  # (T, E)


def aux_topk(routing: RouterOutput, semantics: Semantics | str | None = None) -> torch.Tensor:
    """The experts the auxiliary losses count, ``(T, K)``: the top-K of the unbiased scores
    with no group limit ([V3] eq. 18, Megatron), or the selected experts (``alflb``)."""
    if get_semantics(semantics).aux_counts == "selected":
        return routing.topk_TK
    return routing.scores_TE.detach().topk(routing.topk_TK.shape[1], dim=-1).indices  # (T, K)


def switch_aux_loss(routing: RouterOutput, counts_E: torch.Tensor | None = None,
                    n_counted: int | None = None, semantics: Semantics | str | None = None) -> torch.Tensor:
    r"""``E * sum_k f_k P_k`` of one layer (without alpha); 1 when perfectly balanced.

    ``counts_E`` / ``n_counted`` (tokens) replace the micro-batch's own hard counts, as the
    global-batch loss does. ``semantics`` picks which experts are counted (:func:`aux_topk`).
    """
    scores_TE = routing.scores_TE
    topk_TK = aux_topk(routing, semantics)
    T, E = scores_TE.shape
    K = topk_TK.shape[1]
    if counts_E is None:
        counts_E = torch.bincount(topk_TK.reshape(-1), minlength=E)
        n_counted = T
    f_E = counts_E.to(torch.float32) / (K * n_counted)  # fraction of routed slots
    P_E = router_probs(scores_TE).mean(0)  # (E,)
    return E * (f_E * P_E).sum()


def sequence_aux_loss(routing: RouterOutput, semantics: Semantics | str | None = None) -> torch.Tensor:
    """The same per sequence, averaged over the ``B`` sequences ([V3] eq. 17-20, without alpha).

    By default ``f`` counts the top-K of the unbiased scores with no group limit, as
    [V3] eq. 18 defines it; ``semantics="alflb"`` counts the selected experts.
    """
    scores_TE = routing.scores_TE
    topk_TK = aux_topk(routing, semantics)
    T, E = scores_TE.shape
    K = topk_TK.shape[1]
    B = routing.batch_size
    S = T // B
    probs_BSE = router_probs(scores_TE).view(B, S, E)
    P_BE = probs_BSE.mean(1)  # (B, E)
    counts_BE = torch.zeros(B, E, device=scores_TE.device, dtype=torch.float32)
    counts_BE.scatter_add_(1, topk_TK.view(B, S * K), torch.ones(B, S * K, device=scores_TE.device))
    f_BE = counts_BE / (K * S)
    return (E * (f_BE * P_BE).sum(-1)).mean()


# ---------------------------------------------------------------------- balancer


# (counts_LE, n_tokens) of this process -> the same summed over data-parallel ranks
CountReducer = Callable[[torch.Tensor, int], tuple[torch.Tensor, int]]


# a float64 vector of this process -> the same summed over data-parallel ranks
SumReducer = Callable[[torch.Tensor], torch.Tensor]


def _local_counts(counts_LE: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, int]:
    return counts_LE, n_tokens


def _local_sum(x: torch.Tensor) -> torch.Tensor:
    return x


def averages_micro_batch_sweeps(rule: _rules.UpdateRule | None, semantics: Semantics) -> bool:
    """Whether ``rule`` is quantile balancing read per micro-batch (``micro_batch_mean``)."""
    return (rule is not None and rule.needs_scores and rule.name == "quantile"
            and semantics.quantile_scope == "micro_batch_mean")


def check_data_parallel(rule: _rules.UpdateRule | None, semantics: Semantics, world_size: int) -> None:
    """Refuse, in one line, a rule that needs the scores of the whole global batch on several ranks.

    A score statistic that is a sum (``reducible_scores``: histogram quantile) and
    Megatron's mean of per-micro-batch quantile sweeps are summed over ranks; the exact
    quantile of the global batch needs its sorted scores, which no rank holds.
    """
    if (world_size <= 1 or rule is None or not rule.needs_scores or getattr(rule, "reducible_scores", False)
            or averages_micro_batch_sweeps(rule, semantics)):
        return
    remedy = ("read it per micro-batch (model semantics 'megatron': the mean of the micro-batches' sweeps, "
              "averaged over ranks) or train it in one process") if rule.name == "quantile" else \
        "train it in one process"
    raise InvalidInputError(
        f"the {rule.name!r} rule needs the router scores of the whole global batch, which data-parallel "
        f"ranks do not gather; {remedy}"
    )


class Balancer:
    """Applies one :class:`BalanceConfig` to a model during training.

    Per optimiser step: :meth:`begin_step` (zero the counts), for every micro-batch
    :meth:`loss` (the term to add to the language-model loss, 0 for pure rules), then
    after ``optimizer.step()`` :meth:`end_step` (the global-batch loads, run the rule,
    write the new fp32 biases). :meth:`state_dict` holds the rule states for checkpoints
    (tensors and ints only: ``torch.load(weights_only=True)`` reads it).

    The balancer never communicates: with data parallelism the trainer passes the loads
    summed over ranks to :meth:`end_step`, and ``reduce_counts`` (``global_aux``'s running
    counts at every micro-batch, e.g.
    :meth:`~alflb.model.distributed.DistContext.reduce_counts`) and ``reduce_sum`` (a
    float64 vector summed over ranks, once per step: a reducible rule's accumulators,
    Megatron's per-micro-batch quantile sweeps); all default to this process's values. Each router's selection (``scores + bias`` or ``scores * bias``) is
    the one the rule declares (:meth:`alflb.rules.UpdateRule.capabilities`).
    """

    def __init__(self, cfg: BalanceConfig, model: DeepSeekMoE, *,
                 reduce_counts: CountReducer | None = None, reduce_sum: SumReducer | None = None) -> None:
        self.cfg = cfg
        self.semantics = get_semantics(model.cfg.semantics)
        self.rule = cfg.make_rule()
        if self.semantics.centre and self.rule is not None and self.rule.capabilities().sign_step:
            # torchtitan centres every sign step (routing is unchanged, the bias stops drifting):
            # any rule of the sign family (sign, frozen_tail of it, scheduled) runs centred
            self.rule = self.rule.centred()
        # Megatron's quantile balancing: one sweep per micro-batch (averaged), on raw logits
        quantile = self.rule is not None and self.rule.needs_scores and self.rule.name == "quantile"
        self.micro_mean = averages_micro_batch_sweeps(self.rule, self.semantics)
        self.on_logits = quantile and self.semantics.quantile_input == "logits"
        self.reduce_counts = reduce_counts or _local_counts
        self.reduce_sum = reduce_sum or _local_sum
        # the score statistic is a sum over tokens: accumulate per micro-batch, reduce, finalise
        self.reducible = self.rule is not None and bool(getattr(self.rule, "reducible_scores", False))
        routers = model.routers()
        self.n_layers = len(routers)
        E = model.cfg.n_routed_experts
        self.n_experts, self.top_k = E, model.cfg.top_k
        model.set_selection(self.rule.capabilities().selection if self.rule is not None else "add")
        model.set_selection_input("logits" if self.on_logits else "scores")
        self.states: list[_rules.RuleState | None] = [None] * self.n_layers
        self._scores: list[list[torch.Tensor]] = [[] for _ in range(self.n_layers)]
        self._accs: list[Any] = [None] * self.n_layers  # reducible rules: this step's accumulators
        self._tokens = 0
        self._micro_batches = 0
        self._aux_counts: torch.Tensor | None = None  # (L, E) running counts of aux_topk (global_aux)

    def init_biases(self, model: DeepSeekMoE) -> None:
        """Set every router's bias to the rule's starting bias (zeros; ones if multiplicative)."""
        for i, r in enumerate(model.routers()):
            start = self.rule.initial_bias(self.n_experts, like=r.expert_bias) if self.rule else None
            with torch.no_grad():
                r.expert_bias.copy_(start if start is not None else torch.zeros_like(r.expert_bias))
            self.states[i] = self.rule.init_state(self.n_experts, like=r.expert_bias) if self.rule else None

    def begin_step(self, model: DeepSeekMoE) -> None:
        model.reset_loads()
        self._scores = [[] for _ in range(self.n_layers)]
        self._accs = [None] * self.n_layers
        self._tokens = 0
        self._micro_batches = 0
        self._aux_counts = None

    def loss(self, routing: list[RouterOutput], model: DeepSeekMoE) -> torch.Tensor | None:
        """The balancing loss of one micro-batch, summed over MoE layers (None if none)."""
        n_tokens = routing[0].scores_TE.shape[0] if routing else 0
        self._tokens += n_tokens
        self._micro_batches += 1
        sem = self.semantics
        if self.reducible:
            routers = model.routers()
            for i, r in enumerate(routing):  # (T, E) scores of this micro-batch, routed with this bias
                self._accs[i] = self.rule.accumulate(r.scores_TE.detach(), routers[i].expert_bias,
                                                     self._accs[i], k=self.top_k)
        elif self.rule is not None and self.rule.needs_scores:
            for i, r in enumerate(routing):  # what the router added the bias to: scores or logits
                self._scores[i].append(r.logits_TE if self.on_logits else r.scores_TE.detach())
        mode, alpha = self.cfg.mode, self.cfg.loss_alpha
        terms: list[torch.Tensor] = []
        if mode == "aux":
            terms = [alpha * switch_aux_loss(r, semantics=sem) for r in routing]
        elif mode == "seq_aux":
            terms = [alpha * sequence_aux_loss(r, sem) for r in routing]
        elif mode == "global_aux":
            terms = self._global_aux_terms(routing, model, n_tokens, alpha)
        elif self.cfg.seq_alpha > 0:
            terms = [self.cfg.seq_alpha * sequence_aux_loss(r, sem) for r in routing]
        return torch.stack(terms).sum() if terms else None

    def _global_aux_terms(self, routing: list[RouterOutput], model: DeepSeekMoE, n_tokens: int,
                          alpha: float) -> list[torch.Tensor]:
        """The global-batch loss of every layer for this micro-batch (running counts)."""
        sem = self.semantics
        if sem.aux_counts == "selected":
            # The routers have counted this micro-batch already (counting happens in forward).
            running_LE = model.loads()
        else:
            with torch.no_grad():
                now_LE = torch.stack([torch.bincount(aux_topk(r, sem).reshape(-1), minlength=self.n_experts)
                                      for r in routing])  # (L, E) this micro-batch
            self._aux_counts = now_LE if self._aux_counts is None else self._aux_counts + now_LE
            running_LE = self._aux_counts
        if sem.global_aux_divisor == "tokens":
            # with data parallelism the running counts are summed over ranks (one all-reduce)
            counts_LE, n_counted = self.reduce_counts(running_LE, self._tokens)
        else:
            # Megatron-core: the running count divided by the micro-batches so far, over the
            # (rank-summed) tokens of this micro-batch.
            counts_LE, n_counted = self.reduce_counts(running_LE, n_tokens)
            counts_LE = counts_LE.to(torch.float32) / self._micro_batches
        return [alpha * switch_aux_loss(r, counts_LE[i], n_counted, sem) for i, r in enumerate(routing)]

    def _capacity(self, loads_E: torch.Tensor) -> np.ndarray:
        """The rule's target load per expert: ``K T / E`` or the fp32 mean of the counts."""
        if self.semantics.target == "mean_fp32":
            mean = loads_E.to(torch.float32).sum() / self.n_experts  # as Megatron and torchtitan compute it
            return np.full(self.n_experts, float(mean))
        n_tokens = int(loads_E.sum()) // self.top_k
        return np.full(self.n_experts, self.top_k * n_tokens / self.n_experts)

    def _quantile_micro_means(self, model: DeepSeekMoE) -> list[torch.Tensor]:
        """Megatron's reading: one sweep per micro-batch from the same bias, averaged over
        the micro-batches of every data-parallel rank; the new float64 bias of every layer.

        Each micro-batch weighs the same whatever its token count (megatron-core divides
        the summed per-micro-batch quantiles by their number, then averages over ranks);
        the sweeps' sums and their numbers, every layer's, travel in one ``reduce_sum``
        call, so ranks with unequal numbers of micro-batches still give the plain mean
        over the global batch's micro-batches. The EMA and the centring of the rule are
        linear, so averaging after them equals megatron-core's order. Updates the states.
        """
        parts = []
        for i, r in enumerate(model.routers()):
            sum_E = torch.zeros(self.n_experts, dtype=torch.float64)
            state = self.states[i]
            for chunk in self._scores[i]:
                scores = chunk.cpu().double().numpy()
                T = scores.shape[0]
                cap = np.full(self.n_experts, self.top_k * T / self.n_experts)
                out = self.rule.update(r.expert_bias.clone(), cap, cap, self.states[i], scores_TE=scores)
                sum_E += torch.as_tensor(out.bias_E).cpu().double()
                state = out.state
            if not self._scores[i] and state is not None:
                state = state.advanced()  # this rank saw no micro-batch; the others did
            self.states[i] = state
            parts += [sum_E, sum_E.new_tensor([len(self._scores[i])])]
        packed = self.reduce_sum(torch.cat(parts)).cpu()
        means, width = [], self.n_experts + 1
        for i in range(self.n_layers):
            sum_E, n = packed[i * width:i * width + self.n_experts], float(packed[(i + 1) * width - 1])
            if n < 1:
                raise InvalidInputError("no micro-batch was routed in this optimiser step")
            means.append(sum_E / n)
        return means

    def _reduced_accumulators(self) -> list[Any]:
        """This step's accumulators of every layer summed over ranks: one ``reduce_sum`` call.

        Counts, estimate sums and the two integers travel in one float64 vector (counts
        below ``2**53`` are exact in float64) and come back as int64 counts.
        """
        accs = self._accs
        if any(a is None for a in accs):
            raise InvalidInputError("no micro-batch was accumulated in this optimiser step")
        parts = []
        for a in accs:
            parts += [a.counts_EB.reshape(-1).to(torch.float64), a.bias_sum_E.reshape(-1).to(torch.float64),
                      a.counts_EB.new_tensor([a.n_batches, a.n_tokens], dtype=torch.float64)]
        packed = self.reduce_sum(torch.cat(parts))
        out, pos = [], 0
        for a in accs:
            n_c, n_b = a.counts_EB.numel(), a.bias_sum_E.numel()
            counts = packed[pos:pos + n_c].round().to(torch.int64).view_as(a.counts_EB)
            bias_sum = packed[pos + n_c:pos + n_c + n_b].view_as(a.bias_sum_E)
            n_batches, n_tokens = (int(v) for v in packed[pos + n_c + n_b:pos + n_c + n_b + 2].tolist())
            pos += n_c + n_b + 2
            out.append(dataclasses.replace(a, counts_EB=counts, bias_sum_E=bias_sum,
                                           n_batches=n_batches, n_tokens=n_tokens))
        return out

    @torch.no_grad()
    def end_step(self, model: DeepSeekMoE, loads_LE: torch.Tensor | None = None) -> torch.Tensor:
        """Update the biases from the global-batch loads ``(L, E)`` and return the loads.

        ``loads_LE`` are the counts of the whole global batch (the trainer sums them over
        data-parallel ranks in its one reduction per step); ``None`` reads this process's
        counts from the routers. Call after ``optimizer.step()``.
        """
        loads_LE = (model.loads() if loads_LE is None else loads_LE).clone()
        if self.rule is not None:
            capacity_E = self._capacity(loads_LE[0])
            accs = self._reduced_accumulators() if self.reducible else None
            means = self._quantile_micro_means(model) if self.micro_mean else None
            for i, r in enumerate(model.routers()):
                if means is not None:
                    r.expert_bias.copy_(means[i].to(torch.float32))
                    continue
                if accs is not None:
                    out = self.rule.finalise(r.expert_bias.clone(), accs[i], capacity_E, self.states[i])
                    r.expert_bias.copy_(torch.as_tensor(out.bias_E).to(torch.float32))
                    self.states[i] = out.state
                    continue
                scores = torch.cat(self._scores[i]).cpu() if self.rule.needs_scores else None
                if self.rule.needs_scores:
                    scores = scores.double().numpy()
                out = self.rule.update(r.expert_bias.clone(), loads_LE[i], capacity_E, self.states[i],
                                       scores_TE=scores)
                bias = out.bias_E if torch.is_tensor(out.bias_E) else torch.as_tensor(out.bias_E)
                r.expert_bias.copy_(bias.to(torch.float32))
                self.states[i] = out.state
        model.reset_loads()
        self._scores = [[] for _ in range(self.n_layers)]
        self._accs = [None] * self.n_layers
        self._tokens = 0
        return loads_LE

    def state_dict(self) -> dict[str, Any]:
        states = [None if s is None else s.as_dict() for s in self.states]
        return {"config": self.cfg.as_dict(), "states": states}

    def load_state_dict(self, d: dict[str, Any], model: DeepSeekMoE) -> None:
        states = d.get("states")
        if not isinstance(states, list) or len(states) != self.n_layers:
            raise CorruptFileError(f"balancer state holds {states!r}, expected {self.n_layers} layer states")
        routers = model.routers()
        self.states = [
            None if s is None else _rules.RuleState.from_dict(s, like=routers[i].expert_bias)
            for i, s in enumerate(states)
        ]
