r"""The per-step loop, the exact references, and the two entry points that drive them.

Shape legend: ``N`` steps, ``T`` tokens per step, ``E`` experts, ``K`` experts per token,
``G`` prefix-grid points.

For each seed the stream is drawn once, ``scores_NTE`` (common random numbers: every
policy sees identical scores), and each policy runs causally over it:

.. math::

    A^n = \text{loads of } \operatorname{TopK}(\gamma^n + p^n), \qquad
    f_n(p^n) = \sum_i \operatorname{TopKSum}(\gamma^n_i + p^n) - c \cdot p^n, \qquad
    p^{n+1} = \text{rule}(p^n, A^n)

(route batch ``n`` with the current bias, count, record, then update: ``p^n`` depends
only on batches ``< n``). What one step does is the policy's
(:mod:`alflb.simulator.policy`); this module iterates, times and reports progress.

Per seed a :class:`~alflb.simulator.records.SeedReference` holds the exact comparators:
per-batch optima (dynamic regret, and the ``batch_optimum`` policy), pooled optima of the
prefixes on a log grid (static regret and its curve; the last point is the whole run)
and, with ``pseudo_batches > 0``, ``f_n(p*)`` for the pseudo-regret, ``p*`` being the
optimal dual of a pooled sample of that many further batches of the *same* stream (same
global parameters such as the Zipf offsets, independent noise: ``step_offset``). It
estimates ``argmin E f_n`` only for stationary streams.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .._array import to_numpy
from .._groups import check_groups
from .._progress import progress
from ..comparators import batch_optimum
from ..errors import CorruptFileError, InvalidInputError
from ..problem import AssignmentProblem, balanced_capacity
from ..regret import batch_dual, estimate_pstar, pooled_optimum, prefix_grid
from ..runio import check_memory
from .config import SimulationConfig
from .policy import Policy, make_policy
from .records import PolicyRun, SeedReference, empty_run_arrays
from .result import SimulationResult
from .runfolder import RunFolder

__all__ = ["estimate_memory", "run_policy", "simulate"]

_PSTAR_OFFSET = 1 << 40  # step offset of the independent p* sample (same distribution, fresh noise)
_TICK = 64  # progress-bar update every _TICK steps
_BAR_MIN_STEPS = 20_000  # progress=None shows a bar from this many steps on


def run_steps(policy: Policy, scores_NTE: np.ndarray, k: int, capacity_E: np.ndarray,
              optima: tuple[np.ndarray, np.ndarray] | None = None,
              bar: Any = None) -> dict[str, np.ndarray]:
    """Play ``policy`` over every batch of ``scores_NTE``; the arrays of a :class:`PolicyRun`.

    ``optima``: the per-batch optima ``(objective_N, bias_NE)``, for policies that need them.
    """
    n_steps, _, n_experts = scores_NTE.shape
    out = empty_run_arrays(n_steps, n_experts)
    state = policy.start(n_experts, k, capacity_E, optima)
    for n in range(n_steps):
        policy.step(n, scores_NTE[n], state, out)
        if bar is not None and n % _TICK == _TICK - 1:
            bar.update(_TICK)
    if bar is not None:
        bar.update(n_steps % _TICK)
    return out


def batch_optima(scores_NTE: np.ndarray, k: int, capacity_E: Any, solver: str) -> tuple[np.ndarray, np.ndarray]:
    """``(objective_N, bias_NE)``: :func:`~alflb.comparators.batch_optimum` of every batch.

    ``objective_N[n] = min_p f_n(p)``; ``bias_NE[n]`` an optimal dual (router adds it,
    overloaded experts go down), mean-centred.
    """
    opts = [batch_optimum(s, k, capacity_E, method=solver, keep_assignment=False) for s in scores_NTE]
    return np.array([o.objective for o in opts], dtype=np.float64), np.stack([o.bias_E for o in opts])


def compute_reference(config: SimulationConfig, seed_index: int, seq: np.random.SeedSequence,
                      scores_NTE: np.ndarray, need_batch: bool) -> SeedReference:
    """The exact comparators of one seed's stream (see the module docstring)."""
    n_experts = scores_NTE.shape[2]
    cap = config.capacity_E
    empty_N, empty_NE = np.zeros(0), np.zeros((0, n_experts))
    batch_opt, batch_bias = empty_N, empty_NE
    if need_batch:
        batch_opt, batch_bias = batch_optima(scores_NTE, config.k, cap, config.solver)
    grid, pooled = np.zeros(0, dtype=np.int64), empty_N
    if config.regret:
        grid = prefix_grid(len(scores_NTE), config.prefix_points)
        pooled = np.array(
            [pooled_optimum(scores_NTE[:n], config.k, cap, method=config.solver) for n in grid]
        )
    pstar, f_star = np.zeros(0), empty_N
    if config.pseudo_batches:
        sample = config.make_stream().sample(
            config.pseudo_batches, config.n_tokens, config.n_experts, rng=seq, step_offset=_PSTAR_OFFSET
        )
        pstar = estimate_pstar(sample, config.k, cap, method=config.solver)
        f_star = np.array([batch_dual(s, pstar, config.k, cap) for s in scores_NTE])
    return SeedReference(seed_index, batch_opt, batch_bias, grid, pooled, pstar, f_star)


def run_policy(
    policy: Any,
    scores_NTE: Any,
    k: int,
    capacity_E: Any = None,
    *,
    u: float | None = None,
    record_t1: bool = True,
    sinkhorn_tau: float = 0.05,
    solver: str = "fast",
    n_group: int = 1,
    topk_group: int = 1,
) -> PolicyRun:
    """Run one policy causally over a given score array (no seeds, no regret, no folder).

    ``policy`` is a :class:`~alflb.simulator.PolicySpec`, a ``"name:k=v"`` string, an
    :class:`~alflb.rules.UpdateRule` or a :class:`~alflb.simulator.policy.Policy`.
    ``capacity_E`` defaults to the balanced ``K*T/E``. ``n_group > 1`` routes
    group-limited (keeping ``topk_group`` groups; :mod:`alflb.simulator.policy`); a
    ready-made :class:`~alflb.simulator.policy.Policy` keeps its own routing. The
    returned run has ``seed_index = -1``.

    >>> import numpy as np
    >>> scores = np.random.default_rng(0).random((5, 8, 4)).astype(np.float32)
    >>> run = run_policy("sign:u=0.1", scores, k=1)
    >>> run.load_NE.sum(axis=1).tolist(), run.bias_NE[0].tolist()
    ([8, 8, 8, 8, 8], [0.0, 0.0, 0.0, 0.0])
    """
    scores_NTE = to_numpy(scores_NTE, dtype=None)  # refuses complex, object and ragged input
    if not (np.issubdtype(scores_NTE.dtype, np.number) or scores_NTE.dtype == bool):
        raise InvalidInputError(f"scores_NTE must be numeric, got dtype {scores_NTE.dtype}")
    scores_NTE = np.ascontiguousarray(scores_NTE)
    if scores_NTE.ndim != 3 or min(scores_NTE.shape) == 0:
        raise InvalidInputError(f"scores_NTE must be a non-empty (N, T, E) array, got {scores_NTE.shape}")
    if not np.issubdtype(scores_NTE.dtype, np.floating):
        scores_NTE = scores_NTE.astype(np.float64)
    # One pass: the float64 sum is the CRN checksum, and it is finite iff every score is.
    scores_sum = float(scores_NTE.sum(dtype=np.float64))
    if not np.isfinite(scores_sum):
        raise InvalidInputError("scores_NTE contains NaN or inf")
    _n_steps, n_tokens, n_experts = scores_NTE.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n_experts:
        raise InvalidInputError(f"k must be an integer in 1..E-1 = {n_experts - 1}, got {k!r}")
    # The problem's own checks: integer, non-negative, each <= T, summing to K*T.
    cap = (balanced_capacity(n_tokens, n_experts, k) if capacity_E is None
           else AssignmentProblem._check_capacity(capacity_E, n_tokens, n_experts, k, "equal"))
    groups = check_groups(n_experts, k, n_group, topk_group)
    start = time.perf_counter()
    if not isinstance(policy, Policy):
        policy = make_policy(policy, u=u, record_t1=record_t1, sinkhorn_tau=sinkhorn_tau, groups=groups)
    batch = batch_optima(scores_NTE, k, cap, solver) if policy.needs_batch_optima else None
    arrays = run_steps(policy, scores_NTE, k, cap, batch)
    return PolicyRun(label=policy.label, seed_index=-1, time_s=time.perf_counter() - start,
                     scores_sum=scores_sum, **arrays)


def estimate_memory(config: SimulationConfig) -> int:
    """Bytes a simulation of ``config`` holds at its peak (an estimate, on the high side).

    One seed's scores at a time (float32) and the pooled copy the exact comparators solve
    (float32 for the ``fast`` solver, float64 for the others), each counted at 8 bytes a
    score; the independent ``p*`` sample; and every (policy, seed) run's per-step arrays,
    which the result keeps.
    """
    n, t, e = config.n_steps, config.n_tokens, config.n_experts
    per_score = 8 + (8 if config.regret else 0)
    scores = n * t * e * per_score + config.pseudo_batches * t * e * 12
    runs = config.n_seeds * (len(config.policies) + 1) * n * (e * 16 + 64)
    return int(scores + runs + t * e * 64)


def check_simulation_memory(config: SimulationConfig) -> None:
    """Refuse, with one line naming the sizes, a simulation that cannot fit in memory."""
    check_memory(
        estimate_memory(config),
        f"a simulation of N={config.n_steps} steps x T={config.n_tokens} tokens x "
        f"E={config.n_experts} experts, {config.n_seeds} seeds x {len(config.policies)} policies"
        + (f", {config.pseudo_batches} pseudo-batches" if config.pseudo_batches else ""),
        "use smaller sizes (--steps, --tokens, --experts, --seeds, --pseudo-batches)",
    )


def simulate(
    config: SimulationConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    plot: bool = True,
) -> SimulationResult:
    """Run every policy of ``config`` on ``S`` seeded streams; optionally write a run folder.

    Parameters
    ----------
    config : SimulationConfig
    out : path, optional
        Run folder (:class:`~alflb.simulator.runfolder.RunFolder`). Refused if it already
        holds results, unless ``resume`` (finished (policy, seed) pairs are loaded, not
        recomputed; the stored config must match) or ``overwrite``.
    plot : bool
        Write ``summary.png`` into the run folder.

    Returns
    -------
    SimulationResult

    Examples
    --------
    >>> cfg = SimulationConfig(stream="gaussian", policies=("none", "sign:u=0.01"), n_steps=20,
    ...                        n_tokens=32, n_experts=4, k=1, n_seeds=2, progress=False)
    >>> res = simulate(cfg)
    >>> sorted(res.labels), res.run("sign_u=0.01", 0).load_NE.shape
    (['none', 'sign_u=0.01'], (20, 4))
    >>> bool(np.array_equal(res.scores_checksum("none", 0), res.scores_checksum("sign_u=0.01", 0)))
    True
    """
    if not isinstance(config, SimulationConfig):
        raise InvalidInputError(f"config must be a SimulationConfig, got {type(config).__name__}")
    check_simulation_memory(config)
    if out is None:
        return _simulate(config, None, plot)
    with RunFolder.locked(out, resume=resume, overwrite=overwrite) as path:
        return _simulate(config, RunFolder.attach(path, config), plot)


def _check_scores(folder: RunFolder, run: PolicyRun, scores_sum: float) -> None:
    # A resumed run must come from the very scores this seed draws now.
    if run.scores_sum != scores_sum:
        raise CorruptFileError(
            f"cannot resume {folder.path}: {folder.run_path(run.label, run.seed_index).name} was "
            f"made from other scores (checksum {run.scores_sum!r}, now {scores_sum!r}): the "
            "stream or its code changed; start again with overwrite=True (--overwrite) or in a "
            "new folder"
        )


def _simulate(config: SimulationConfig, folder: RunFolder | None, plot: bool) -> SimulationResult:
    stream = config.make_stream()
    cap = config.capacity_E
    policies = config.make_policies()
    need_batch = (config.regret and config.dynamic) or any(p.needs_batch_optima for p in policies)

    total = config.n_seeds * config.n_steps * len(policies)
    enabled = total >= _BAR_MIN_STEPS if config.progress is None else config.progress
    bar = progress(total=total, desc="simulate", unit="step", enabled=None if enabled else False)
    runs: dict[tuple[str, int], PolicyRun] = {}
    refs: list[SeedReference] = []
    try:
        for s, seq in enumerate(config.seed_sequences()):
            ref = folder.read_reference(s) if folder is not None and folder.has_reference(s) else None
            todo = []
            for policy in policies:
                if folder is not None and folder.has_run(policy.label, s):
                    runs[(policy.label, s)] = folder.read_run(policy.label, s)
                    bar.update(config.n_steps)
                else:
                    todo.append(policy)
            if ref is not None and not todo:
                refs.append(ref)
                continue
            scores_NTE = stream.sample(config.n_steps, config.n_tokens, config.n_experts, rng=seq)
            scores_sum = float(scores_NTE.sum(dtype=np.float64))
            for (_label, seed_index), done in runs.items():
                if seed_index == s and folder is not None:
                    _check_scores(folder, done, scores_sum)
            if ref is None:
                bar.set_postfix_str(f"seed {s}: exact comparators")
                ref = compute_reference(config, s, seq, scores_NTE, need_batch)
                if folder is not None:
                    folder.write_reference(ref)
            refs.append(ref)
            batch = (ref.batch_opt_N, ref.batch_bias_NE)
            for policy in todo:
                bar.set_postfix_str(f"seed {s}: {policy.label}")
                start = time.perf_counter()
                arrays = run_steps(policy, scores_NTE, config.k, cap, batch, bar)
                run = PolicyRun(label=policy.label, seed_index=s, time_s=time.perf_counter() - start,
                                scores_sum=scores_sum, **arrays)
                runs[(policy.label, s)] = run
                if folder is not None:
                    folder.write_run(run)
    finally:
        bar.close()
    result = SimulationResult(config, runs, tuple(refs))
    if folder is not None:
        folder.write_tables(result, plot=plot)
    return result
