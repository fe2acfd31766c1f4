"""What a simulation records: one policy's arrays on one seed, and that seed's exact references.

Shape legend: ``N`` steps, ``E`` experts, ``G`` prefix-grid points.

Data only: :class:`~alflb.simulator.runfolder.RunFolder` stores these as ``.npz`` files,
:mod:`alflb.simulator.loop` fills them, :class:`~alflb.simulator.result.SimulationResult`
reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PolicyRun", "SeedReference"]

#: The per-step arrays of a :class:`PolicyRun`, in the order they are stored.
RUN_ARRAYS = ("load_NE", "bias_NE", "f_N", "imbalance_N", "switching_N", "objective_N", "dropped_N")
#: The arrays of a :class:`SeedReference`.
REF_ARRAYS = ("batch_opt_N", "batch_bias_NE", "prefix_n_G", "pooled_opt_G", "pstar_E", "f_star_N")


def empty_run_arrays(n_steps: int, n_experts: int) -> dict[str, np.ndarray]:
    """The arrays a policy fills step by step: NaN where a policy defines no value."""
    nan = np.full(n_steps, np.nan)
    return {
        "load_NE": np.zeros((n_steps, n_experts), dtype=np.int64),
        "bias_NE": np.zeros((n_steps, n_experts)),
        "f_N": nan.copy(),
        "imbalance_N": nan.copy(),
        "switching_N": nan.copy(),
        "objective_N": nan.copy(),
        "dropped_N": np.zeros(n_steps),
    }


@dataclass(frozen=True, eq=False)
class PolicyRun:
    """What one policy did on one seed's stream (arrays per step ``n``).

    Attributes
    ----------
    load_NE : int64 (N, E)
        Loads of batch ``n``.
    bias_NE : float64 (N, E)
        The bias batch ``n`` was routed with (the multiplier ``b`` for ``multiplicative``;
        the optimal dual for ``batch_optimum``; ``tau ln s`` for ``sinkhorn``; NaN for
        ``expert_choice``). The router adds the bias; an overloaded expert's bias goes down.
    f_N : float64 (N,)
        ``f_n(p^n)``, the batch dual at the bias used (NaN where undefined).
    imbalance_N, switching_N : float64 (N,)
        The T1 terms (NaN where undefined or not recorded).
    objective_N : float64 (N,)
        ``sum gamma . x`` of the routing actually used (unbiased scores).
    dropped_N : float64 (N,)
        Fraction of tokens that got no expert (``expert_choice``; 0 otherwise).
    time_s : float
        Wall time of the policy's loop.
    scores_sum : float
        Sum of the stream's scores (float64): a checksum of the common random numbers.
    """

    label: str
    seed_index: int
    load_NE: np.ndarray
    bias_NE: np.ndarray
    f_N: np.ndarray
    imbalance_N: np.ndarray
    switching_N: np.ndarray
    objective_N: np.ndarray
    dropped_N: np.ndarray
    time_s: float
    scores_sum: float


@dataclass(frozen=True, eq=False)
class SeedReference:
    """The exact comparators of one seed's stream (empty arrays where not computed).

    Attributes
    ----------
    batch_opt_N : float64 (N,)
        ``min_p f_n(p)`` per batch.
    batch_bias_NE : float64 (N, E)
        The per-batch optimal duals (centred).
    prefix_n_G : int64 (G,)
        Prefix lengths (log-spaced, the last is ``N``).
    pooled_opt_G : float64 (G,)
        ``min_p sum_{m<=n} f_m(p)`` for each prefix: the pooled assignment optimum.
    pstar_E : float64 (E,)
        ``p*``: the optimal dual (centred) of an independent pooled sample of
        ``pseudo_batches`` batches of the same stream (same global parameters, fresh noise).
    f_star_N : float64 (N,)
        ``f_n(p*)``.
    """

    seed_index: int
    batch_opt_N: np.ndarray
    batch_bias_NE: np.ndarray
    prefix_n_G: np.ndarray
    pooled_opt_G: np.ndarray
    pstar_E: np.ndarray
    f_star_N: np.ndarray
