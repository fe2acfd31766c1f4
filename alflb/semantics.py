r"""Which framework's definitions routing, the bias update and the auxiliary losses follow.

Where megatron-core 0.16.1, torchtitan 0.3.0, transformers and the DeepSeek-V3 paper
coincide, alflb computes the same numbers; where they differ, a :class:`Semantics` (a
frozen table of flags) picks one reading. Routing (:class:`alflb.model.Router`), the
balancer's use of the update rules, the auxiliary losses and the simulator-side
:mod:`alflb.cli.semantics_diff` read the same flags. ``docs/frameworks.md`` cites the
source file and line each flag was read from.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token, ``G`` groups.
Sign convention: the router adds the bias ``p``; an overloaded expert's bias goes down.

The default, ``deepseek_v3``, follows the DeepSeek-V3 report [V3]: groups ranked by the
sum of their top-2 biased scores (section 2.1.2, "noaux_tc"), gates normalised over the
selected experts for every ``K`` (eq. 13), the sequence-wise loss counting the top-K of
the *unbiased* affinities with no group limit (eq. 18), the uncentred sign step, loads
counted once per real training forward.
``alflb`` is the reading before this table existed (the auxiliary losses counted the
experts actually selected, biased and group-limited).

Examples
--------
>>> get_semantics("megatron").group_score_size(k=8, topk_groups=4)
2
>>> get_semantics("megatron").group_score_size(k=6, topk_groups=2)
3
>>> get_semantics().name, get_semantics("deepseek_v3").aux_counts
('deepseek_v3', 'unbiased')
>>> get_semantics("megatron").normalise_gates(k=1), get_semantics("alflb").normalise_gates(k=1)
(False, True)

References
----------
.. [V3] DeepSeek-AI, DeepSeek-V3 Technical Report, arXiv:2412.19437 (2024), eqs. 12-20.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInputError, UnknownNameError

__all__ = ["DEFAULT_SEMANTICS", "SEMANTICS", "Semantics", "get_semantics"]


@dataclass(frozen=True, kw_only=True)
class Semantics:
    """One framework's reading of the definitions where the frameworks differ."""

    name: str  # the key in SEMANTICS
    group_score: str  # "top2": a group's score is its top-2 biased scores' sum; "topk_per_group": top K // topk_groups
    normalise_top1: bool  # with K = 1 and normalize_gates, the gate is route_scale (True) or the raw score times it
    aux_counts: str  # f_k of the aux losses: "unbiased" top-K of the scores, no group limit | "selected" experts
    global_aux_divisor: str  # global-batch loss: "tokens" (all tokens so far) | "micro_batches" (running mean count, micro-batch tokens)
    quantile_scope: str  # quantile balancing: "global" one sweep on the global batch | "micro_batch_mean" mean of per-micro-batch sweeps
    quantile_input: str  # quantile balancing reads and selects on: "scores" (s + p) | "logits" (raw fp32 logits + p)
    centre: bool  # subtract the mean of each bias step (every rule of the sign family)
    target: str  # the rule's capacity: "kt_over_e" K*T/E in float64 | "mean_fp32" the fp32 mean of the counts
    score_dtype: str  # scores before the bias: "fp32" | "activation" (rounded to the router input's dtype first)
    count_when: str  # loads counted: "training_forward" each real training forward once | "grad_enabled" any mode
    counting: str  # the framework's counting in words (padding, reductions, checkpointing)

    def __post_init__(self) -> None:
        allowed = {
            "group_score": ("top2", "topk_per_group"),
            "aux_counts": ("unbiased", "selected"),
            "global_aux_divisor": ("tokens", "micro_batches"),
            "quantile_scope": ("global", "micro_batch_mean"),
            "quantile_input": ("scores", "logits"),
            "count_when": ("training_forward", "grad_enabled"),
            "target": ("kt_over_e", "mean_fp32"),
            "score_dtype": ("fp32", "activation"),
        }
        for field, values in allowed.items():
            if getattr(self, field) not in values:
                raise InvalidInputError(f"{field} must be one of {values}, got {getattr(self, field)!r}")
        for field in ("normalise_top1", "centre"):
            if not isinstance(getattr(self, field), bool):
                raise InvalidInputError(f"{field} must be a bool, got {getattr(self, field)!r}")

    def group_score_size(self, k: int, topk_groups: int) -> int:
        """How many of a group's top biased scores rank the group (at least 1)."""
        if self.group_score == "top2":
            return 2
        return max(1, k // topk_groups)

    def normalise_gates(self, k: int, normalize_gates: bool = True) -> bool:
        """Whether the ``k`` selected gates are divided by their sum."""
        return bool(normalize_gates) and (k > 1 or self.normalise_top1)

    def replace(self, **changes: Any) -> Semantics:
        """A copy with some flags changed (for ablations and mutation tests)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_V3 = dict(
    group_score="top2", normalise_top1=True, aux_counts="unbiased", global_aux_divisor="tokens",
    quantile_scope="global", quantile_input="scores", centre=False, target="kt_over_e", score_dtype="fp32",
    count_when="training_forward",
    counting="each real training forward once (training mode, not evaluation, not recomputation)",
)

SEMANTICS: dict[str, Semantics] = {
    "deepseek_v3": Semantics(name="deepseek_v3", **_V3),
    "alflb": Semantics(name="alflb", **{**_V3, "aux_counts": "selected"}),
    "megatron": Semantics(
        name="megatron", group_score="topk_per_group", normalise_top1=False, aux_counts="unbiased",
        global_aux_divisor="micro_batches", quantile_scope="micro_batch_mean", quantile_input="logits",
        centre=False, target="mean_fp32", score_dtype="activation", count_when="grad_enabled",
        counting="with grad enabled (any mode), padding skipped, all-reduced over TP x CP x DP",
    ),
    "torchtitan": Semantics(
        name="torchtitan", **{**_V3, "centre": True, "target": "mean_fp32",
                              "counting": "training mode, halved under non-re-entrant checkpointing"},
    ),
    "transformers": Semantics(name="transformers", **_V3),
}
DEFAULT_SEMANTICS = "deepseek_v3"


def get_semantics(name: str | Semantics | None = None) -> Semantics:
    """The named semantics (``None``: the default, ``deepseek_v3``); a Semantics passes through."""
    if isinstance(name, Semantics):
        return name
    key = DEFAULT_SEMANTICS if name is None else name
    if not isinstance(key, str) or key.lower() not in SEMANTICS:
        raise UnknownNameError(f"unknown semantics {name!r}: use one of {', '.join(SEMANTICS)}")
    return SEMANTICS[key.lower()]


# ------------------------------------------------------------------ how much it matters


def route_as(scores_TE: Any, bias_E: Any, k: int, semantics: str | Semantics | None = None, *,
             n_groups: int = 1, topk_groups: int = 1) -> Any:
    r"""Top-``k`` routing of ``scores + bias`` as ``semantics`` defines it, a bool ``(T, E)`` map.

    .. math:: x_{i\cdot} = \operatorname{TopK}_k\big(\operatorname{mask}_G(\tilde s_{i\cdot} + p)\big)

    where :math:`\tilde s` is ``s`` (or ``s`` rounded to bf16 under ``score_dtype =
    "activation"``, as with bf16 logits in megatron-core) and :math:`\operatorname{mask}_G`
    keeps the ``topk_groups`` groups with the largest sums of their top ``group_score_size``
    biased scores (the rest ``-inf``). Computed in fp32 like the model's router; ties go to
    the lowest indices. The router adds the bias ``p``; an overloaded expert's bias goes down.

    >>> import numpy as np
    >>> s = np.array([[0.9, 0.1, 0.8, 0.7, 0.6, 0.5]], dtype=np.float32)
    >>> route_as(s, np.zeros(6), 2, "megatron", n_groups=3, topk_groups=2).astype(int).tolist()
    [[1, 0, 1, 0, 0, 0]]
    >>> route_as(s, np.zeros(6), 2, "deepseek_v3", n_groups=3, topk_groups=2).astype(int).tolist()
    [[0, 0, 1, 1, 0, 0]]
    """
    import numpy as np

    from ._groups import group_limited_topk

    sem = get_semantics(semantics)
    s = np.asarray(scores_TE, dtype=np.float32)
    if sem.score_dtype == "activation":
        import torch

        s = torch.from_numpy(np.ascontiguousarray(s)).to(torch.bfloat16).float().numpy()
    v = s + np.asarray(bias_E, dtype=np.float32)  # (T, E) fp32
    T, E = v.shape
    size = sem.group_score_size(k, topk_groups) if n_groups > 1 else 2
    idx = group_limited_topk(v, k, n_groups, topk_groups, size)
    out = np.zeros((T, E), dtype=bool)
    np.put_along_axis(out, idx, True, axis=1)
    return out


def semantics_effects(scores_NTE: Any, k: int, *, u: float = 1e-3, n_groups: int = 1, topk_groups: int = 1,
                      variants: dict[str, Semantics] | None = None) -> list[dict[str, Any]]:
    r"""How much each semantics changes a causal sign-rule run on the same score stream.

    For every variant, the bias starts at 0; each batch ``n`` is routed with
    :func:`route_as` and the bias then moves by the variant's sign step (centred where
    it centres; target ``K T / E`` or the fp32 mean). Rows, against the default
    (``deepseek_v3``) run: ``routed_differently`` (fraction of tokens whose expert set
    differs, all steps), ``load_l1`` (mean over steps of ``sum_k |A_k - A^0_k| / (K T)``),
    ``maxvio`` (mean of ``(max A - mean A) / mean A`` over the second half), ``regret``
    (static regret :math:`\sum_n f_n(p^n) - \min_p \sum_n f_n(p)` of the batch duals,
    :func:`alflb.regret.static_regret`; the dual knows no groups),
    and ``aux_counted_differently`` (fraction of tokens whose auxiliary-loss counts differ
    from the default's reading: the selected experts versus the unbiased top-K).
    """
    import numpy as np

    from .metrics import max_violation
    from .problem import balanced_capacity
    from .regret import batch_dual, pooled_optimum, static_regret

    scores = np.asarray(scores_NTE, dtype=np.float32)
    N, T, E = scores.shape
    cap = np.asarray(balanced_capacity(T, E, k), dtype=np.float64)
    pooled = pooled_optimum(scores.astype(np.float64), k, cap)
    variants = variants or dict(SEMANTICS)
    base = get_semantics(DEFAULT_SEMANTICS)
    runs: dict[str, dict[str, Any]] = {}
    for name, sem in {"deepseek_v3": base, **variants}.items():
        bias = np.zeros(E, dtype=np.float32)
        maps, loads, f = [], [], []
        for n in range(N):
            x = route_as(scores[n], bias, k, sem, n_groups=n_groups, topk_groups=topk_groups)
            load = x.sum(0)
            maps.append(x)
            loads.append(load)
            f.append(batch_dual(scores[n].astype(np.float64), bias.astype(np.float64), k, cap))
            target = np.float32(load.astype(np.float32).sum() / np.float32(E)) if sem.target == "mean_fp32" \
                else k * T / E
            step = (np.float32(u) * np.sign(np.float32(target) - load.astype(np.float32))).astype(np.float32)
            if sem.centre:
                step = step - step.mean(dtype=np.float32)
            bias = (bias + step).astype(np.float32)
        aux_map = [np.zeros((T, E), bool) for _ in range(N)]
        for n in range(N):  # what the auxiliary losses count under this reading
            aux_map[n] = maps[n] if sem.aux_counts == "selected" else route_as(scores[n], np.zeros(E), k, "deepseek_v3")
        runs[name] = {"maps": maps, "loads": np.array(loads), "f": np.array(f), "aux": aux_map}
    ref = runs["deepseek_v3"]
    rows = []
    for name in variants:
        r = runs[name]
        diff = np.mean([(a != b).any(1).mean() for a, b in zip(r["maps"], ref["maps"])])
        aux = np.mean([(a != b).any(1).mean() for a, b in zip(r["aux"], ref["aux"])])
        rows.append({
            "semantics": name,
            "routed_differently": float(diff),
            "load_l1": float(np.abs(r["loads"] - ref["loads"]).sum(1).mean() / (k * T)),
            "maxvio": float(np.mean(max_violation(r["loads"][N // 2:]))),
            "regret": static_regret(r["f"], pooled),
            "aux_counted_differently": float(aux),
        })
    return rows
