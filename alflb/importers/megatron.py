"""Megatron-core's router-replay recordings as alflb traces (tier ``ids``).

Shape legend: ``N`` steps, ``L`` MoE layers, ``T`` tokens, ``E`` experts, ``K`` top-k.

Megatron-core (``megatron/core/transformer/moe/router_replay.py``, version 0.16.1) keeps
one ``RouterReplay`` per MoE layer, appended to ``RouterReplay.global_router_replay_instances``
in instantiation order (line 87; a router makes one when
``config.moe_enable_routing_replay``, ``router.py`` lines 205-207). Under the ``RECORD``
action, ``get_replay_topk`` (lines 116-144) computes the routing and stores the top-k
indices with ``record_indices`` (line 98): a ``torch.topk`` index tensor, int64
``(tokens, topk)``, overwritten by each forward. ``RouterReplay.get_recorded_data()``
(line 45) returns the list of these tensors, one per layer. Megatron writes no file
itself; this importer reads what ``torch.save`` makes of that list.

Accepted files (``torch.save`` of plain containers, read with ``torch.load(weights_only=True)``):

- one step: the list ``RouterReplay.get_recorded_data()`` returns, ``L`` integer tensors
  ``(T, K)``, or ``{"layers": that list}``;
- several steps: a list of such lists (one ``get_recorded_data()`` per step), or
  ``{"steps": that list}``.

Every layer of a step must hold the same ``T`` tokens (each router sees the step's
tokens); steps with fewer tokens are padded with ``-1`` (empty slots). Every tensor has
the same ``K``. Ids must be integers in ``[0, E)``, distinct within a token. The file
does not store ``E``: it is a required argument. The trace holds the selected ids, no
scores; its loads are counted from the ids (:meth:`alflb.traces.Trace.counts_NLE`, empty
slots skipped).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, InvalidInputError
from ._torchfile import load_torch_file

__all__ = ["read_megatron"]

_SOURCE = "megatron-core 0.16.1 megatron/core/transformer/moe/router_replay.py (RouterReplay.get_recorded_data)"


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "numpy") and hasattr(value, "dtype") and not isinstance(value, np.ndarray)


def _steps(data: Any, path: Path) -> list[list[Any]]:
    """The recording as a list of steps, each a list of per-layer tensors."""
    if isinstance(data, dict):
        if set(data) == {"layers"}:
            data = [data["layers"]]
        elif set(data) == {"steps"}:
            data = data["steps"]
        else:
            raise CorruptFileError(f"{path}: a Megatron router-replay dict holds 'layers' or 'steps' only, "
                                   f"got keys {sorted(map(str, data))}")
    elif isinstance(data, (list, tuple)) and data and all(_is_tensor(x) or x is None for x in data):
        data = [data]
    if not isinstance(data, (list, tuple)) or not data:
        raise CorruptFileError(f"{path}: expected the list RouterReplay.get_recorded_data() returns "
                               f"(or a list of them, one per step), got {type(data).__name__}")
    for n, step in enumerate(data):
        if not isinstance(step, (list, tuple)) or not step:
            raise CorruptFileError(f"{path}: step {n} must be a non-empty list of per-layer tensors, "
                                   f"got {type(step).__name__}")
    return [list(step) for step in data]


def _ids(value: Any, n: int, layer: int, path: Path, n_experts: int) -> np.ndarray:
    where = f"{path}: step {n} layer {layer}"
    if value is None:
        raise CorruptFileError(f"{where} recorded nothing (None): the layer's RouterReplay never ran "
                               "under RouterReplayAction.RECORD")
    if not _is_tensor(value):
        raise CorruptFileError(f"{where} must be a tensor of top-k indices, got {type(value).__name__}")
    ids = value.detach().cpu().numpy()
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
        raise CorruptFileError(f"{where} must hold integer expert ids, got dtype {ids.dtype}")
    if ids.ndim != 2 or min(ids.shape) == 0:
        raise CorruptFileError(f"{where} must be a non-empty (tokens, topk) tensor, got shape {tuple(ids.shape)}")
    if (ids < 0).any() or (ids >= n_experts).any():
        raise CorruptFileError(f"{where} holds an expert id outside [0, {n_experts}) "
                               f"(min {int(ids.min())}, max {int(ids.max())}): check n_experts")
    srt = np.sort(ids, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
    if dup.any():
        token = int(np.flatnonzero(dup)[0])
        raise CorruptFileError(f"{where} token {token} selects an expert twice ({ids[token].tolist()})")
    return ids.astype(np.int64)


def read_megatron(path: str | os.PathLike, *, n_experts: int | None = None,
                  metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a ``torch.save``'d Megatron-core router-replay recording as the arrays of an alflb trace.

    Parameters
    ----------
    path : path of the ``.pt`` file (see the module docstring for what it may hold)
    n_experts : int
        ``E``, the routed experts per layer (required: the file does not store it).
    metadata : dict, optional
        Added to the trace's metadata (e.g. ``{"n_group": 8, "topk_group": 4}``).

    Returns
    -------
    dict
        ``topk_NLTK`` (int64 ``(N, L, T, K)``, ``-1`` padding shorter steps) and
        ``metadata`` (``k``, ``n_experts``, the source); :func:`alflb.traces.import_trace`
        makes the :class:`~alflb.traces.Trace` (tier ``"ids"``).

    Examples
    --------
    >>> import tempfile, torch
    >>> from alflb.traces import import_trace
    >>> path = tempfile.mkdtemp() + "/replay.pt"
    >>> torch.save([torch.tensor([[0, 3], [2, 1]]), torch.tensor([[1, 0], [3, 2]])], path)
    >>> trace = import_trace(path, format="megatron", n_experts=4)
    >>> trace.tier, trace.shape, trace.counts_NLE()[0][0].tolist()
    ('ids', (1, 2, 2, 4), [[1, 1, 1, 1], [1, 1, 1, 1]])
    """
    if n_experts is None:
        raise InvalidInputError("a Megatron router-replay file does not store the number of experts: "
                                "pass n_experts (--n-experts E)")
    if isinstance(n_experts, bool) or not isinstance(n_experts, (int, np.integer)) or n_experts < 2:
        raise InvalidInputError(f"n_experts must be an integer >= 2, got {n_experts!r}")
    n_experts = int(n_experts)
    path = Path(path)
    steps = _steps(load_torch_file(path, "Megatron router-replay file"), path)
    n_layers = len(steps[0])
    ids = []
    for n, step in enumerate(steps):
        if len(step) != n_layers:
            raise CorruptFileError(f"{path}: step {n} has {len(step)} layers, step 0 has {n_layers}")
        layers = [_ids(value, n, layer, path, n_experts) for layer, value in enumerate(step)]
        shapes = {a.shape for a in layers}
        if len({s[0] for s in shapes}) > 1:
            raise CorruptFileError(f"{path}: step {n}: the layers hold different token counts "
                                   f"{[a.shape[0] for a in layers]}")
        ids.append(layers)
    widths = {a.shape[1] for step in ids for a in step}
    if len(widths) > 1:
        raise CorruptFileError(f"{path}: the tensors hold different top-k widths {sorted(widths)}")
    k = widths.pop()
    if k >= n_experts:
        raise InvalidInputError(f"{path}: top-k = {k} must be below n_experts = {n_experts}")
    t_max = max(step[0].shape[0] for step in ids)
    topk_NLTK = np.full((len(ids), n_layers, t_max, k), -1, np.int64)
    for n, step in enumerate(ids):
        for layer, a in enumerate(step):
            topk_NLTK[n, layer, : a.shape[0]] = a
    meta: dict[str, Any] = {
        "source": "megatron", "importer": _SOURCE, "imported_from": path.name, "k": int(k),
        "n_experts": n_experts,
        "counting": {"per": "step (the last forward each RouterReplay recorded)",
                     "tokens": "the tokens of that forward on this rank; -1 pads shorter steps"},
    }
    meta.update(metadata or {})
    return {"topk_NLTK": topk_NLTK, "metadata": meta}
