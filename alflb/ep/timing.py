r"""A step-time model of one MoE layer under expert parallelism, and the time lost to imbalance.

Shape legend: ``E`` experts, ``R`` ranks, ``N`` steps.

For expert loads :math:`A_k` (token-slots, ``sum_k A_k = K T``) placed by shares
:math:`s_{kr}` (:class:`~alflb.ep.Placement`), rank ``r`` receives
:math:`L_r = \sum_k A_k s_{kr}` slots and

.. math::

    t = t_{\downarrow} + \max_r t^{\mathrm{disp}}_r + \max_r t^{\mathrm{comp}}_r
        + \max_r t^{\mathrm{comb}}_r + t_{\uparrow}

    t^{\mathrm{comp}}_r = \sum_{k} f(A_k s_{kr}), \qquad
    f(n) = \mathbb 1[n > 0] \max\Big(\frac{3 d f_e b_w}{B_{\mathrm{HBM}}},\
           \frac{6 d f_e \lceil n / \tau \rceil \tau}{\eta P}\Big)

    t^{\mathrm{disp}}_r = \max\Big(\ell_{\mathrm{in}} + \frac{L_r \rho_{\mathrm{in}} d' b_d}{B_{\mathrm{in}}},\
           \ell_{\mathrm{out}} + \frac{L_r \rho_{\mathrm{out}} d' b_d}{B_{\mathrm{out}}}\Big)

``f`` is a SwiGLU expert (three ``d x f_e`` GEMMs, ``2`` flops per multiply-add) whose
token count is padded to the GEMM tile ``tau``, with a memory-bound floor (its weights
read once from HBM). Tokens originate evenly on the ``R`` ranks (data-parallel
attention), so of a rank's received slots the fraction :math:`1/R` is its own (free
unless ``count_local``), :math:`\rho_{\mathrm{in}} = (G-1)/R` comes over NVLink from its
node of ``G`` ranks and :math:`\rho_{\mathrm{out}} = (R-G)/R` over InfiniBand; the two
links work concurrently. Combine is the same with ``b_c`` bytes per element. ``d' = d``,
or ``r`` with BigMac's low-dimension option, which adds two projection GEMMs
(:math:`t_\downarrow, t_\uparrow`, ``2 T d r / R`` flops each per rank). Overlapping two
micro-batches gives :math:`t = \max(t^{\mathrm{disp}} + t^{\mathrm{comb}},\
t^{\mathrm{comp}} + t_\downarrow + t_\uparrow)`.

Time lost to imbalance: :math:`t(\text{placement}, A) / t(\text{balanced}) - 1`, where
the balanced step spreads the same slots evenly, ``sum A / E`` per expert and
``sum A / R`` per rank. Tile padding makes the figure slightly negative on rare inputs
(an uneven split can fill GEMM tiles better than the even one); it is reported as is.

Deviations: dispatch counts one copy per routed slot (DeepEP's low-latency kernels; its
normal kernels send a token once per node and forward over NVLink); senders are
balanced by assumption, so only receivers are modelled; BigMac also runs the experts at
the low dimension, which is not modelled (expert compute stays at ``d``).

Default parameters and their public sources (see :class:`TimeModel`): DeepSeek-V3
shapes (hidden 7168, expert width 2048, top-8; [V3] table and config); NVLink about
160 GB/s and InfiniBand about 50 GB/s per GPU ([V3] section 3.2.2); H100/H800 SXM dense
BF16 peak 989 TFLOP/s and HBM3 3.35 TB/s (NVIDIA H100 Tensor Core GPU datasheet);
FP8 dispatch with one fp32 scale per 128 channels and BF16 combine (DeepEP README).
Latencies default to 0: no public per-message figure was verified.

References
----------
.. [V3] DeepSeek-AI, DeepSeek-V3 Technical Report, arXiv:2412.19437.
.. [DeepEP] DeepSeek-AI, DeepEP (github.com/deepseek-ai/DeepEP), docs/legacy.md.
.. [BigMac] BigMac: a communication-efficient MoE structure (descend, communicate,
   communicate, ascend), AAAI 2025.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .._array import to_numpy
from .._validate import finite_float, positive_int
from ..errors import InvalidInputError
from .placement import Placement, rank_load

__all__ = ["StepTime", "TimeModel", "balanced_step_time", "expert_compute_time", "step_time",
           "time_lost"]


@dataclass(frozen=True, kw_only=True)
class TimeModel:
    """Parameters of :func:`step_time` (SI units: bytes, seconds, flop/s)."""

    hidden: int = 7168                      # d, model width (DeepSeek-V3)
    expert_ffn: int = 2048                  # f_e, routed expert's intermediate width (DeepSeek-V3)
    top_k: int = 8                          # K, routed experts per token (DeepSeek-V3)
    dispatch_bytes: float = 1.0 + 4 / 128   # b_d: FP8 + one fp32 scale per 128 channels (DeepEP)
    combine_bytes: float = 2.0              # b_c: BF16 combine (DeepEP)
    intra_bw: float = 160e9                 # NVLink per GPU, about 160 GB/s ([V3] 3.2.2)
    inter_bw: float = 50e9                  # InfiniBand per GPU, about 50 GB/s ([V3] 3.2.2)
    intra_latency_s: float = 0.0            # per all-to-all over NVLink (no verified figure)
    inter_latency_s: float = 0.0            # per all-to-all over InfiniBand (no verified figure)
    peak_flops: float = 989e12              # H100/H800 SXM dense BF16 (NVIDIA datasheet)
    efficiency: float = 1.0                 # eta, achieved fraction of peak in expert GEMMs
    hbm_bw: float = 3.35e12                 # H100/H800 SXM HBM3 (NVIDIA datasheet)
    weight_bytes: float = 2.0               # b_w, BF16 expert weights
    tile_tokens: int = 128                  # tau, GEMM tile along tokens
    overlap: bool = False                   # two micro-batches overlap communication and compute
    comm_dim: int | None = None             # r: BigMac low-dimension all-to-all (None: d)
    count_local: bool = False               # charge a rank's own slots to the link (DeepEP's convention)

    def __post_init__(self) -> None:
        for name in ("hidden", "expert_ffn", "top_k", "tile_tokens"):
            positive_int(getattr(self, name), name)
        for name in ("dispatch_bytes", "combine_bytes", "intra_bw", "inter_bw", "peak_flops",
                     "hbm_bw", "weight_bytes"):
            finite_float(getattr(self, name), name, minimum=0.0, strict=True)
        for name in ("intra_latency_s", "inter_latency_s"):
            finite_float(getattr(self, name), name, minimum=0.0)
        finite_float(self.efficiency, "efficiency", minimum=0.0, strict=True)
        finite_float(self.efficiency, "efficiency", maximum=1.0)
        if self.comm_dim is not None:
            positive_int(self.comm_dim, "comm_dim", maximum=self.hidden)

    @property
    def comm_width(self) -> int:
        return self.hidden if self.comm_dim is None else self.comm_dim

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepTime:
    """Modelled time of one MoE layer step (seconds); per-rank parts have shape ``(R,)``."""

    total_s: float
    dispatch_s: float
    compute_s: float
    combine_s: float
    projection_s: float
    balanced_s: float
    dispatch_R: np.ndarray
    compute_R: np.ndarray
    combine_R: np.ndarray

    @property
    def time_lost(self) -> float:
        """``total_s / balanced_s - 1`` (a fraction; times 100 for percent)."""
        return self.total_s / self.balanced_s - 1.0 if self.balanced_s > 0 else 0.0


def expert_compute_time(tokens: Any, model: TimeModel) -> np.ndarray:
    r"""``f(n)``: one expert's compute time for ``n`` tokens (tile-stepped, memory floor).

    >>> m = TimeModel(hidden=1024, expert_ffn=1024, tile_tokens=128, peak_flops=1e12, hbm_bw=1e12)
    >>> expert_compute_time([0, 1, 128, 129], m).round(9).tolist()
    [0.0, 0.000805306, 0.000805306, 0.001610613]
    """
    n = to_numpy(tokens, dtype=np.float64)
    padded = np.ceil(n / model.tile_tokens - 1e-12) * model.tile_tokens
    gemm = 6.0 * model.hidden * model.expert_ffn * padded / (model.efficiency * model.peak_flops)
    floor = 3.0 * model.hidden * model.expert_ffn * model.weight_bytes / model.hbm_bw
    return np.where(n > 0, np.maximum(gemm, floor), 0.0)


def _over_ranks(x_R: np.ndarray) -> float:
    """The step waits for the slowest rank."""
    return float(np.max(x_R))


def _comm_R(slots_R: np.ndarray, n_ranks: int, n_nodes: int, bytes_per_slot: float,
            model: TimeModel) -> np.ndarray:
    """Per-rank receive time of one all-to-all (NVLink and InfiniBand concurrently)."""
    g = n_ranks // n_nodes
    rho_in = (g - 1 + (1 if model.count_local else 0)) / n_ranks
    rho_out = (n_ranks - g) / n_ranks
    nbytes = slots_R * bytes_per_slot
    zero = np.zeros_like(nbytes)
    t_in = model.intra_latency_s + nbytes * rho_in / model.intra_bw if rho_in > 0 else zero
    t_out = model.inter_latency_s + nbytes * rho_out / model.inter_bw if rho_out > 0 else zero
    return np.maximum(t_in, t_out)


def _projection_s(total_slots: float, n_ranks: int, model: TimeModel) -> float:
    if model.comm_dim is None:
        return 0.0
    tokens = total_slots / model.top_k / n_ranks
    flops = 2.0 * tokens * model.hidden * model.comm_dim
    floor = model.hidden * model.comm_dim * model.weight_bytes / model.hbm_bw
    one = max(flops / (model.efficiency * model.peak_flops), floor) if tokens > 0 else 0.0
    return 2.0 * one


def _combine(disp_R, comp_R, comb_R, proj, model) -> tuple[float, float, float, float]:
    d, c, b = _over_ranks(disp_R), _over_ranks(comp_R), _over_ranks(comb_R)
    total = max(d + b, c + proj) if model.overlap else d + c + b + proj
    return total, d, c, b


def balanced_step_time(total_slots: float, n_experts: int, n_ranks: int, n_nodes: int = 1,
                       model: TimeModel | None = None) -> float:
    """The step time when ``total_slots`` are spread evenly: ``sum A / E`` per expert, ``sum A / R`` per rank.

    >>> m = TimeModel(hidden=1024, expert_ffn=1024, peak_flops=1e12, hbm_bw=1e12)
    >>> round(balanced_step_time(8 * 128, 8, 2, model=m) * 1e3, 6)
    3.226192
    """
    model = TimeModel() if model is None else model
    total = finite_float(total_slots, "total_slots", minimum=0.0)
    e, r = positive_int(n_experts, "n_experts"), positive_int(n_ranks, "n_ranks")
    slots_R = np.full(1, total / r)
    comp_R = np.full(1, e / r * float(expert_compute_time(total / e, model)))
    disp = _comm_R(slots_R, r, n_nodes, model.comm_width * model.dispatch_bytes, model)
    comb = _comm_R(slots_R, r, n_nodes, model.comm_width * model.combine_bytes, model)
    return _combine(disp, comp_R, comb, _projection_s(total, r, model), model)[0]


def step_time(load_E: Any, placement: Placement, model: TimeModel | None = None) -> StepTime:
    r"""Modelled time of one MoE layer step for expert loads ``load_E`` under ``placement``.

    Parameters
    ----------
    load_E : array (E,)
        Token-slots per expert in this step (all micro-batches of the step's batch).
    placement : Placement
        Where experts and replicas sit, and how replicated experts split their tokens.
    model : TimeModel, optional
        Hardware and shape parameters (DeepSeek-V3 on H800 by default).

    Returns
    -------
    StepTime
        Total and parts, per-rank arrays, the balanced reference and ``time_lost``.

    Examples
    --------
    >>> from alflb.ep import contiguous
    >>> m = TimeModel(hidden=1024, expert_ffn=1024, peak_flops=1e12, hbm_bw=1e12)
    >>> st = step_time([256, 128, 128, 128, 128, 128, 128, 0], contiguous(8, 2), m)
    >>> round(st.time_lost, 2)          # rank 0 runs 5 GEMM tiles where 4 would do
    0.25
    """
    model = TimeModel() if model is None else model
    a = to_numpy(load_E, dtype=np.float64)
    if a.shape != (placement.n_experts,):
        raise InvalidInputError(f"load_E must have shape ({placement.n_experts},), got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise InvalidInputError("load_E must be finite and non-negative")
    r, g = placement.n_ranks, placement.n_nodes
    slots_R = rank_load(a, placement)
    comp_R = expert_compute_time(a[:, None] * placement.share_ER, model).sum(axis=0)
    disp_R = _comm_R(slots_R, r, g, model.comm_width * model.dispatch_bytes, model)
    comb_R = _comm_R(slots_R, r, g, model.comm_width * model.combine_bytes, model)
    proj = _projection_s(float(a.sum()), r, model)
    total, d, c, b = _combine(disp_R, comp_R, comb_R, proj, model)
    bal = balanced_step_time(float(a.sum()), placement.n_experts, r, g, model)
    return StepTime(total, d, c, b, proj, bal, disp_R, comp_R, comb_R)


def time_lost(load_E: Any, placement: Placement, model: TimeModel | None = None) -> float:
    """``t(placement, loads) / t(same tokens, forced balance) - 1``, a fraction (x100 for %).

    >>> from alflb.ep import contiguous
    >>> round(time_lost([4, 4, 4, 4], contiguous(4, 2)), 12)
    0.0
    """
    return step_time(load_E, placement, model).time_lost
