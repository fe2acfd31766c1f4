"""SGLang's expert-distribution recorder dumps as alflb traces.

Shape legend: ``N`` forward passes, ``L`` MoE layers, ``T`` tokens, ``E`` logical
experts, ``P`` physical experts (logical experts plus their redundant replicas), ``K`` top-k.

The recorder (``python/sglang/srt/eplb/expert_distribution.py`` of sgl-project/sglang,
read at commit dd780ab9de484cf1198ff538a1b8b0da6464ab5a) writes ``torch.save`` files
of plain dicts when ``/dump_expert_distribution_record`` is called:

- ``stat`` / ``stat_approx`` mode (``_StatAccumulator.dump``), rank 0 only,
  ``expert_distribution_recorder_<time>.pt``::

      {"rank": int,
       "logical_count": int32 tensor (N, L, E),   # one row per buffered forward pass,
                                                  # summed over all ranks (all_reduce),
                                                  # replicas folded onto logical experts
       "average_utilization_rate_over_window": float or None}

  The buffer is circular (``expert_distribution_recorder_buffer_size``): rows of passes
  that never ran are zero, and once it wrapped the rows are not in time order.
  ``stat_approx`` counts at the DeepEP dispatch and is approximate.

- ``per_pass`` / ``per_token`` mode (``_DetailAccumulator.dump``), every rank,
  ``expert_distribution_recorder_<time>_<rank>.pt``::

      {"records": [{"forward_pass_id": int, "rank": int, "gatherer_key": str, ...}, ...],
       "last_physical_to_logical_map": int tensor (L, P)}

  ``per_pass`` records carry ``global_physical_count`` (int tensor (L, P)); ``per_token``
  records carry ``topk_ids_of_layer`` (int32 tensor (L, T_pass, 8); physical expert ids,
  ``-1`` where no id was written, columns beyond the model's k stay ``-1``) with
  ``input_ids``, ``positions``, ``extend_seq_lens`` and ``forward_mode``.

The files are read with ``torch.load(weights_only=True)``: no code runs on load.
Physical ids are mapped to logical experts with ``last_physical_to_logical_map`` (the
map at dump time: a rebalance during the recording makes earlier passes approximate).
A ``per_token`` import pads every pass to the longest with ``-1`` (empty slots).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, InvalidInputError
from ._torchfile import load_torch_file

__all__ = ["read_sglang"]

_SOURCE = "sgl-project/sglang python/sglang/srt/eplb/expert_distribution.py"


def _array(value: Any, what: str, path: Path, ndim: int) -> np.ndarray:
    arr = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    if arr.ndim != ndim or not np.issubdtype(arr.dtype, np.integer):
        raise CorruptFileError(f"{path}: {what} must be a {ndim}-D integer tensor, got "
                               f"{arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def read_sglang(path: str | os.PathLike, *, keep_empty: bool = False,
                metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read one SGLang expert-distribution dump (any mode) as the arrays of an alflb trace.

    Parameters
    ----------
    path : path of a ``expert_distribution_recorder_*.pt`` file
    keep_empty : bool
        Keep forward passes that routed nothing (unfilled rows of the ``stat`` buffer).
    metadata : dict, optional
        Added to the trace's metadata (e.g. ``{"k": 8, "n_group": 8, "topk_group": 4}``:
        the dump does not record the routing semantics, except k in ``per_token`` mode).

    Returns
    -------
    dict
        ``loads_NLE``, ``topk_NLTK`` and ``metadata`` (:func:`alflb.traces.import_trace`
        makes the :class:`~alflb.traces.Trace`): ``stat`` and ``per_pass`` give tier
        ``"counts"`` (``loads_NLE``); ``per_token`` tier ``"ids"`` (``topk_NLTK`` of
        logical experts, ``-1`` for empty slots).
    """
    path = Path(path)
    data = load_torch_file(path, "SGLang expert-distribution dump")
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path}: an SGLang dump is a dict, got {type(data).__name__}")
    meta: dict[str, Any] = {"source": "sglang", "importer": _SOURCE, "imported_from": path.name}
    if "logical_count" in data:
        loads_NLE = _array(data["logical_count"], "logical_count", path, 3)
        mode = "stat"
        meta["counting"] = {"per": "forward pass (buffered, order not guaranteed after wrap)",
                            "ranks": "summed over all ranks", "experts": "logical (replicas folded)",
                            "where": "select_experts (stat) or DeepEP dispatch (stat_approx, approximate)"}
        rate = data.get("average_utilization_rate_over_window")
        if rate is not None:
            meta["average_utilization_rate_over_window"] = float(rate)
        topk_NLTK = None
    elif "records" in data:
        records = data["records"]
        if not isinstance(records, list) or not records:
            raise CorruptFileError(f"{path}: 'records' must be a non-empty list")
        if "last_physical_to_logical_map" not in data:
            raise CorruptFileError(f"{path}: lacks 'last_physical_to_logical_map'")
        p2l_LP = _array(data["last_physical_to_logical_map"], "last_physical_to_logical_map", path, 2)
        n_layers, n_physical = p2l_LP.shape
        n_experts = int(p2l_LP.max()) + 1
        meta["rank"] = int(records[0].get("rank", -1))
        meta["forward_pass_ids"] = [int(r.get("forward_pass_id", -1)) for r in records]
        if all("topk_ids_of_layer" in r for r in records):
            mode = "per_token"
            loads_NLE, topk_NLTK = None, _per_token(records, p2l_LP, path)
            meta["k"] = int(topk_NLTK.shape[3])
            meta["counting"] = {"per": "forward pass", "ranks": f"rank {meta['rank']} only",
                                "experts": "logical (mapped with last_physical_to_logical_map)",
                                "tokens": "every token of the pass; -1 pads shorter passes"}
        elif all("global_physical_count" in r for r in records):
            mode = "per_pass"
            topk_NLTK = None
            loads_NLE = np.zeros((len(records), n_layers, n_experts), np.int64)
            for i, r in enumerate(records):
                count_LP = _array(r["global_physical_count"], "global_physical_count", path, 2)
                if count_LP.shape != (n_layers, n_physical):
                    raise CorruptFileError(f"{path}: record {i} has global_physical_count of shape "
                                           f"{count_LP.shape}, the map is {(n_layers, n_physical)}")
                for layer in range(n_layers):
                    np.add.at(loads_NLE[i, layer], p2l_LP[layer], count_LP[layer])
            meta["counting"] = {"per": "forward pass", "ranks": f"as rank {meta['rank']} saw them",
                                "experts": "logical (mapped with last_physical_to_logical_map)"}
        else:
            raise CorruptFileError(f"{path}: records carry neither 'topk_ids_of_layer' (per_token) "
                                   "nor 'global_physical_count' (per_pass)")
        meta["n_experts"] = n_experts
    else:
        raise CorruptFileError(f"{path}: not an SGLang expert-distribution dump (keys {sorted(data)})")
    meta["sglang_mode"] = mode
    if loads_NLE is not None and not keep_empty:
        busy = loads_NLE.sum(axis=(1, 2)) > 0
        meta["dropped_empty_steps"] = int((~busy).sum())
        if not busy.any():
            raise InvalidInputError(f"{path}: every recorded forward pass is empty (nothing was routed)")
        loads_NLE = loads_NLE[busy]
    meta.update(metadata or {})
    return {"loads_NLE": loads_NLE, "topk_NLTK": topk_NLTK, "metadata": meta}


def _per_token(records: list[dict[str, Any]], p2l_LP: np.ndarray, path: Path) -> np.ndarray:
    """Logical ids ``(N, L, T, K)`` of ``per_token`` records; ``-1`` for empty slots."""
    n_layers, n_physical = p2l_LP.shape
    ids = [_array(r["topk_ids_of_layer"], "topk_ids_of_layer", path, 3) for r in records]
    for i, a in enumerate(ids):
        if a.shape[0] != n_layers or (a < -1).any() or (a >= n_physical).any():
            raise CorruptFileError(f"{path}: record {i}: topk_ids_of_layer must be (L = {n_layers}, T, K) "
                                   f"physical ids in [-1, {n_physical})")
    width = max(a.shape[2] for a in ids)
    used = [np.flatnonzero((a >= 0).any(axis=(0, 1))) for a in ids]
    k = max((int(u.max()) + 1 for u in used if u.size), default=0)  # trailing all -1 columns: k < 8
    if k == 0:
        raise InvalidInputError(f"{path}: no expert id was recorded")
    t_max = max(a.shape[1] for a in ids)
    out = np.full((len(ids), n_layers, t_max, width), -1, np.int64)
    for i, a in enumerate(ids):
        logical = np.where(a >= 0, np.take_along_axis(p2l_LP[:, None, :].repeat(a.shape[1], 1),
                                                      np.maximum(a, 0), axis=2), -1)
        out[i, :, : a.shape[1], : a.shape[2]] = logical
    return out[..., :k]
