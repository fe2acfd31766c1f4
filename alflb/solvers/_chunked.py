r"""Exact solve of a pooled problem whose score matrix does not fit in memory.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token, ``M`` held tokens.

The scores stay on disk (a ``.npy`` opened with ``np.load(mmap_mode="r")``) and are read
in row chunks of at most ``max_memory_bytes / 4`` bytes. Only ``E``-sized state and the
near-tie tokens live in memory:

1. A bias ``p`` from an in-memory subsample (quantile sweeps and Newton steps of
   :mod:`._fast` on every ``s``-th token, capacities scaled), then Newton steps on the
   full loads ``A(p) = c``, each one pass over the chunks (:func:`route_pairs` per chunk:
   loads, boundary pairs, margins).
2. One pass holds the ``M`` tokens whose routing margin under ``p`` is below ``theta``
   (float64 rows) and counts the loads ``A^F`` of the others, whose top-K sets are final.
3. The held tokens are solved exactly (``method="fast"``) with capacities ``c - A^F``;
   that gives ``x^M`` and a bias ``p'``.
4. A certificate pass: every other token's top-K set under ``p`` must still be a top-K set
   under ``p'`` (its margin ``theta`` absorbs ``max |p' - p|`` up to ``2 max|p' - p| <
   theta``; checked token by token, not assumed), and ``g(p') = gamma . x`` within the
   tolerances of :func:`alflb.solvers.certify`. If a token fails, ``theta`` grows fourfold.

Passes are ``O(TE)`` each; memory is one chunk plus ``M E`` floats plus the ``(T, K)``
expert indices of the answer. The chunk passes are independent, so they can run on a
dask cluster (``client=``): each task reads its own rows from the file.

Sign convention: the router adds the bias; an overloaded expert gets a lower ``p``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._kernels import fused_route
from ..errors import InvalidInputError, SolverError
from ..problem import AssignmentProblem, balanced_capacity
from ._fast import _excess, newton_refine, quantile_sweeps
from ._kernels_certify import certify_rows
from ._kernels_fast import route_pairs

__all__ = ["ChunkedSolveResult", "solve_chunked"]


@dataclass(frozen=True)
class ChunkedSolveResult:
    """An exact, certified solution computed chunk by chunk.

    Attributes
    ----------
    topk_TK : int32 ndarray, shape (T, K)
        The experts of each token (sorted ascending): the optimal assignment.
    objective, dual_value, gap, relative_gap : float
        ``gamma . x``, ``g(bias_E)``, their difference and the same over the magnitudes.
    bias_E : float64 ndarray, shape (E,)
        Optimal dual, mean-centred (router adds it; an overloaded expert gets a lower ``p``).
    load_E : int64 ndarray, shape (E,)
    success : bool
        Feasible, relative gap and every token's slackness within the tolerance.
    n_held : int
        Tokens held in memory for the exact phase (``M``).
    n_passes : int
        Passes over the scores.
    message : str
    """

    topk_TK: np.ndarray
    objective: float
    dual_value: float
    gap: float
    relative_gap: float
    bias_E: np.ndarray
    load_E: np.ndarray
    success: bool
    n_held: int
    n_passes: int
    message: str


def _open(scores: Any) -> np.ndarray:
    if isinstance(scores, (str, os.PathLike)):
        arr = np.load(scores, mmap_mode="r", allow_pickle=False)
    else:
        arr = scores
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise InvalidInputError("scores must be a (T, E) array or the path of a 2-D .npy file")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInputError(f"scores must be real numbers, got dtype {arr.dtype}")
    return arr


def _chunks(n_tokens: int, rows: int):
    for lo in range(0, n_tokens, rows):
        yield lo, min(lo + rows, n_tokens)


def _load(scores, lo, hi):
    """Rows ``lo:hi`` in memory: float32 stays float32 (every kernel computes in float64)."""
    block = scores[lo:hi]
    block = np.ascontiguousarray(block, dtype=np.float32 if block.dtype == np.float32 else np.float64)
    if not np.isfinite(block).all():
        raise InvalidInputError(f"scores rows {lo}:{hi} contain NaN or inf")
    return block


def _pass_pairs(scores, p_E, k, rows, h):
    """Loads, boundary-pair counts with margin <= h, and a margin sample (one pass)."""
    n_tokens, n_experts = scores.shape
    load_E = np.zeros(n_experts, np.int64)
    n_EE = np.zeros(n_experts * n_experts, np.int64)
    sample = []
    step = max(1, n_tokens // 65536)
    for lo, hi in _chunks(n_tokens, rows):
        load, pair_T, margin_T = route_pairs(_load(scores, lo, hi), p_E, k)
        load_E += load
        if h > 0:
            n_EE += np.bincount(pair_T[margin_T <= h], minlength=n_experts * n_experts)
        sample.append(margin_T[(-lo) % step :: step])
    return load_E, n_EE.reshape(n_experts, n_experts), np.concatenate(sample), step


def _newton_chunked(scores, p_E, k, cap_E, rows, max_steps):
    """Damped Newton steps on ``A(p) = c`` (as :func:`newton_refine`), one pass per trial."""
    n_experts = scores.shape[1]
    centre = np.full((n_experts, n_experts), 1.0 / n_experts)
    load_E, _, sample, step = _pass_pairs(scores, p_E, k, rows, 0.0)
    n_passes = 1
    best_ex, best_p = _excess(load_E, cap_E), p_E
    for _ in range(max_steps):
        if best_ex <= n_experts:
            break
        rank = min(sample.size // 4, max(int(8 * best_ex / step), 16 * n_experts // step + 1))
        h = float(np.partition(sample, rank)[rank])
        if not (np.isfinite(h) and h > 0):
            break
        load_E, n_EE, _, _ = _pass_pairs(scores, best_p, k, rows, h)
        n_passes += 1
        R_EE = (n_EE + n_EE.T) / (2.0 * h)
        lap_EE = np.diag(R_EE.sum(axis=1)) - R_EE
        step_E = np.linalg.lstsq(lap_EE + centre, (cap_E - load_E).astype(np.float64), rcond=None)[0]
        t, improved = 1.0, False
        for _ in range(9):
            q_E = best_p + t * step_E
            q_E -= q_E.mean()
            load_E, _, sample, step = _pass_pairs(scores, q_E, k, rows, 0.0)
            n_passes += 1
            ex = _excess(load_E, cap_E)
            if ex < best_ex:
                improved = ex < 0.8 * best_ex
                best_ex, best_p = ex, q_E
                break
            t *= 0.5
        if not improved:
            break
    return best_p, best_ex, n_passes, sample, step


def solve_chunked(
    scores: Any,
    k: int,
    capacity_E: Any = None,
    *,
    max_memory_bytes: int = 2**30,
    rtol: float = 1e-9,
    newton_steps: int = 12,
    client: Any = None,
) -> ChunkedSolveResult:
    r"""Solve the pooled top-K assignment problem exactly without loading all the scores.

    .. math::

        \max_x \sum_{i,k} \gamma_{ik} x_{ik} \ \text{s.t.}\ \sum_k x_{ik} = K,\
        \sum_i x_{ik} = c_k,\ x \in \{0,1\}^{T \times E}

    Parameters
    ----------
    scores : str, os.PathLike or ndarray, shape (T, E)
        A ``.npy`` path (memory-mapped, never read whole) or an array (e.g. a memmap).
    k : int
        Experts per token.
    capacity_E : array_like of int, shape (E,), optional
        Equality capacities summing to ``K*T`` (default: balanced ``K*T/E``).
    max_memory_bytes : int
        Budget of the chunk buffers: chunks of ``max_memory_bytes / (4 * 8 E)`` rows. The
        held near-tie tokens and the ``(T, K)`` answer come on top.
    rtol : float
        Relative tolerance of the certificate, as :func:`alflb.solvers.certify`.
    client : dask.distributed.Client, optional
        Run the certificate's chunk pass as dask tasks (each reads its own rows).

    Returns
    -------
    ChunkedSolveResult
        ``bias_E`` follows the project convention (router adds it).

    Examples
    --------
    >>> import numpy as np
    >>> s = np.random.default_rng(0).standard_normal((512, 8))
    >>> res = solve_chunked(s, 2, max_memory_bytes=32_768)
    >>> res.success, res.load_E.tolist() == [128] * 8
    (True, True)
    """
    scores = _open(scores)
    n_tokens, n_experts = scores.shape
    if capacity_E is None:
        cap_E = balanced_capacity(n_tokens, n_experts, int(k))
    else:
        cap_E = np.asarray(capacity_E, dtype=np.int64)
        if cap_E.shape != (n_experts,) or cap_E.sum() != k * n_tokens or np.any(cap_E < 0):
            raise InvalidInputError(f"capacity_E must be (E,) non-negative integers summing to K*T = {k * n_tokens}")
    if not (isinstance(max_memory_bytes, (int, np.integer)) and max_memory_bytes >= 4 * 8 * n_experts):
        raise InvalidInputError(f"max_memory_bytes must be an integer >= {4 * 8 * n_experts}, got {max_memory_bytes!r}")
    rows = max(1, int(max_memory_bytes) // (4 * 8 * n_experts))

    # 1. a bias from a strided subsample held in memory, then Newton passes on the full data
    n_sub = min(n_tokens, max(rows, 64 * n_experts))
    stride = max(1, n_tokens // n_sub)
    sub = np.asarray(scores[::stride], dtype=np.float64)
    sub_prob = AssignmentProblem.with_rounded_capacity(sub, k) if capacity_E is None else AssignmentProblem(
        sub, k, _scaled_capacity(cap_E, sub.shape[0], k)
    )
    p_E = quantile_sweeps(sub_prob)
    if np.all((sub_prob.capacity_E > 0) & (sub_prob.capacity_E < sub.shape[0])):
        p_E, _, _ = newton_refine(sub_prob, p_E)
    del sub, sub_prob
    p_E, excess, n_passes, sample, step = _newton_chunked(scores, p_E, k, cap_E, rows, newton_steps)

    held_target = max(8 * excess, 64 * n_experts)
    for _attempt in range(12):
        rank = min(sample.size - 1, held_target // step + 1)
        theta = float(np.partition(sample, rank)[rank]) if rank < sample.size - 1 else np.inf
        # 2. hold the near-tie tokens, count the loads of the others
        held_idx, held_rows = [], []
        fixed_load = np.zeros(n_experts, np.int64)
        for lo, hi in _chunks(n_tokens, rows):
            block = _load(scores, lo, hi)
            load, _, margin_T = route_pairs(block, p_E, k)
            near = (margin_T < theta) | (margin_T <= 0.0)  # a zero margin is a tie: hold it
            held_idx.append(lo + np.flatnonzero(near))
            held_rows.append(block[near])
            if near.any():
                load = load - _loads_of(block[near], p_E, k)
            fixed_load += load
        n_passes += 1
        idx_M = np.concatenate(held_idx)
        rows_ME = np.concatenate(held_rows) if idx_M.size else np.empty((0, n_experts))
        cap_M = cap_E - fixed_load
        if idx_M.size and np.all((cap_M >= 0) & (cap_M <= idx_M.size)):
            # 3. the exact solve of the held tokens
            from ._registry import solve

            res = solve(AssignmentProblem(rows_ME, k, cap_M), "fast", rtol=rtol)
            q_E = np.asarray(res.bias_E)
            x_M = res.assignment_TE
            # 4. certificate pass over every token
            cert = _certify_chunked(scores, p_E, q_E, k, cap_E, idx_M, x_M, rows, rtol, client)
            n_passes += 1
            if cert is not None:
                topk_TK, objective, dual_value, magnitude, load_E, n_bad, worst, _tol = cert
                gap = dual_value - objective
                relative_gap = gap / magnitude if magnitude > 0 else gap
                ok = bool(np.array_equal(load_E, cap_E) and n_bad == 0 and abs(relative_gap) <= rtol)
                msg = (
                    f"chunked: {n_passes} passes of {rows} rows, {idx_M.size} held tokens "
                    f"(margin < {theta:.3e}); held problem: {res.message.split(';')[0]}; "
                    f"certificate {'ok' if ok else 'FAILED'}: gap {gap:.3e} (relative {relative_gap:.2e}), "
                    f"slackness {worst:.2e}"
                )
                bias_E = q_E - q_E.mean()
                bias_E.setflags(write=False)
                topk_TK.setflags(write=False)
                return ChunkedSolveResult(
                    topk_TK=topk_TK, objective=objective, dual_value=dual_value, gap=gap,
                    relative_gap=relative_gap, bias_E=bias_E, load_E=load_E, success=ok,
                    n_held=int(idx_M.size), n_passes=n_passes, message=msg,
                )
        if not np.isfinite(theta):
            break
        held_target *= 4
    raise SolverError("chunked solve: the held tokens could not be made exact (no certificate)")


def _scaled_capacity(cap_E, n_sub, k):
    share = cap_E * (k * n_sub) / cap_E.sum()
    out = np.floor(share).astype(np.int64)
    rest = k * n_sub - out.sum()
    out[np.argsort(out - share)[:rest]] += 1
    return np.minimum(out, n_sub)


def _loads_of(block, p_E, k):
    load, _, _ = route_pairs(np.ascontiguousarray(block), p_E, k)
    return load


def _certify_block(block, lo, p_E, q_E, k, idx_M, x_M, tol_rel, threads=True):
    """Top-K sets (held tokens: from ``x_M``), objective, TopKSum under ``q``, magnitudes,
    loads and slackness for rows ``lo:lo+len(block)``. ``threads=False`` in a Dask task:
    the cluster runs tasks side by side, and numba's workqueue layer refuses concurrent
    parallel launches."""
    n, n_experts = block.shape
    _, _, top = fused_route(block, p_E, k, return_topk=True, threads=threads)  # fixed tokens: no ties
    top.sort(axis=1)
    a, b = np.searchsorted(idx_M, [lo, lo + n])
    if b > a:
        top[idx_M[a:b] - lo] = np.sort(np.nonzero(x_M[a:b])[1].reshape(-1, k), axis=1)
    x = np.zeros((n, n_experts), bool)
    np.put_along_axis(x, top, True, axis=1)
    objective, topk, magnitude, max_score, viol = certify_rows(block, q_E, x, k, threads=threads)
    return top.astype(np.int32), objective, topk, magnitude * k, x.sum(axis=0), viol, max_score


def _certify_task(source, lo, hi, p_E, q_E, k, idx_M, x_M, rtol):
    scores = np.load(source, mmap_mode="r", allow_pickle=False) if isinstance(source, (str, os.PathLike)) else source
    return _certify_block(_load(scores, lo, hi), lo, p_E, q_E, k, idx_M, x_M, rtol, threads=False)


def _certify_chunked(scores, p_E, q_E, k, cap_E, idx_M, x_M, rows, rtol, client):
    n_tokens = scores.shape[0]
    spans = list(_chunks(n_tokens, rows))
    if client is not None:
        # a task gets the file's path, not the array: each worker memory-maps it and reads
        # its own rows (an in-memory array is shipped as is)
        source = scores.filename if isinstance(scores, np.memmap) and scores.filename else scores
        futures = [
            client.submit(_certify_task, source, lo, hi, p_E, q_E, k, idx_M, x_M, rtol, pure=False)
            for lo, hi in spans
        ]
        parts = client.gather(futures)
    else:
        parts = [_certify_block(_load(scores, lo, hi), lo, p_E, q_E, k, idx_M, x_M, rtol) for lo, hi in spans]
    max_score = max(part[6] for part in parts)
    tol = rtol * (max_score + float(np.abs(q_E).max()))
    worst = max(float(part[5].max()) for part in parts)
    n_bad = sum(int(np.count_nonzero(part[5] > tol)) for part in parts)
    if n_bad:
        return None  # a fixed token is no longer top-K under q: hold more tokens
    topk_TK = np.concatenate([part[0] for part in parts])
    objective = sum(part[1] for part in parts)
    dual_value = sum(part[2] for part in parts) - float(cap_E @ q_E)
    magnitude = sum(part[3] for part in parts) + float(np.abs(cap_E) @ np.abs(q_E))
    load_E = np.sum([part[4] for part in parts], axis=0).astype(np.int64)
    return topk_TK, objective, dual_value, magnitude, load_E, n_bad, worst, tol
