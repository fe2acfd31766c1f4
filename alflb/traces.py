r"""Recorded router-score traces: the ``.npz`` format, its reader and writer, and a recorder.

Shape legend: ``N`` steps, ``L`` MoE layers, ``T`` tokens per step, ``E`` experts, ``K`` top-k.

Tiers
-----
Three levels of router data, each holding what the ones below it give
(:data:`TIERS`, :attr:`Trace.tier`):

- ``"counts"``: loads per expert per step, ``loads_NLE`` (placement studies:
  ``alflb ep --loads``);
- ``"ids"``: the selected experts of every token, ``topk_NLTK`` (routing replay);
- ``"scores"``: every expert's score of every token, ``scores_NLTE`` (bias replay and
  regret: ``alflb simulate --trace``).

An analysis calls :meth:`Trace.require` with the tier it needs and refuses a lower one in
one line (``this needs a scores-tier trace; FILE holds ids only``); any tier gives counts
(:meth:`Trace.counts_NLE`); :func:`import_trace` reads other recorders' dumps.

Routing semantics
-----------------
The metadata keys ``k``, ``score_func`` (or ``activation``), ``n_group``, ``topk_group``,
``route_scale``, ``counting`` (how the loads were counted: an object or a string) and
``bias_at_record_LE`` are validated on construction (``k`` in ``[1, E]``, ``n_group``
dividing ``E``, ``topk_group`` in ``[1, n_group]``, ...) into :attr:`Trace.semantics`,
a :class:`RoutingSemantics`. The router adds the bias to the scores for selection only;
an overloaded expert's bias goes down.

File format (version 1)
-----------------------
A trace is an uncompressed or compressed numpy ``.npz`` holding only plain arrays (it is
read with ``allow_pickle=False``); at least one of ``scores_NLTE``, ``topk_NLTK`` and
``loads_NLE`` is present:

==================  ===============  ========================================================
name                dtype / shape    meaning
==================  ===============  ========================================================
``format``          str, ()          the constant ``"alflb-trace"``
``version``         int64, ()        ``1``
``scores_NLTE``     float32,         router scores ``gamma`` of every step and layer, as the
                    (N, L, T, E)     router computed them (after sigmoid/softmax, before any
                                     bias); finite (tier ``scores``)
``topk_NLTK``       int64,           optional: the selected experts, ``-1`` for an empty slot
                    (N, L, T, K)     (tier ``ids``; an ids-only file states ``n_experts``)
``loads_NLE``       int64,           optional: the loads the model actually routed (with its
                    (N, L, E)        bias), non-negative (tier ``counts``)
``bias_NLE``        float32,         optional: the bias each step was routed with (the
                    (N, L, E)        trainer keeps it in the metadata instead)
``metadata``        str, ()          a JSON object (model, data, ``k``, ``score_func``,
                                     ``n_group``, ...); ``"{}"`` when empty
==================  ===============  ========================================================

Older alflb reads files with scores (ignoring the optional arrays), not lower tiers.
An older transformers trace keeps its ids in a sidecar (metadata ``topk_file``).

:func:`load_trace` raises :class:`~alflb.errors.CorruptFileError` on a wrong ``format``
tag or ``version``, a wrong shape or dtype, non-finite scores, negative loads, ids out
of range, metadata that is not a JSON object or routing semantics that contradict the
arrays. :func:`save_trace` writes atomically
(:func:`alflb.runio.save_npz_atomic`).

A trace is replayed in the simulator with ``make_stream("trace", path=..., layer=...)``
(or ``alflb simulate --trace FILE --layer L``).

Recording from PyTorch
----------------------
:class:`TraceRecorder` registers forward hooks on router modules (one per MoE layer) and
collects the scores each produces (``source="output"``) or receives
(``source="input"``), flattened to ``(tokens, E)``:

>>> import torch
>>> routers = [torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)]   # stand-ins for routers
>>> rec = TraceRecorder(routers, transform=torch.sigmoid)
>>> for _ in range(3):                        # three training steps
...     x = torch.randn(4, 5, 16)            # (batch, sequence, width)
...     for r in routers:
...         _ = r(x)
...     rec.end_step()
>>> rec.close()
>>> trace = rec.to_trace(metadata={"activation": "sigmoid", "k": 2})
>>> trace.scores_NLTE.shape
(3, 2, 20, 8)

``rec.save(path)`` writes the file. Calls of one router within a step (micro-batches)
are concatenated along tokens; every step must see every layer with the same token count.

A recorder made with ``TraceRecorder(None)`` registers no hook: each step is handed over
whole with :meth:`TraceRecorder.add_step`, optionally with its loads (then written as
``loads_NLE``), the biases it routed with and a label (the trainer of :mod:`alflb.model`
records its traced optimiser steps this way, after gathering the scores of every rank):

>>> rec = TraceRecorder(None)
>>> rec.add_step(np.full((2, 4, 3), 0.5), load_LE=[[4, 4, 0], [0, 4, 4]], label=7)
>>> rec.labels, rec.to_trace().loads_NLE.shape
([7], (1, 2, 3))

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915 (the online setting).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _trace_semantics as _sem
from ._array import is_torch
from ._trace_semantics import TIERS, RoutingSemantics, TierError
from .errors import CorruptFileError, InvalidInputError
from .runio import load_npz, save_npz_atomic

__all__ = [
    "TIERS", "TRACE_FORMAT", "TRACE_VERSION", "RoutingSemantics", "TierError", "Trace", "TraceRecorder",
    "import_trace", "load_trace", "save_trace",
]

TRACE_FORMAT = "alflb-trace"
TRACE_VERSION = 1


@dataclass(frozen=True, eq=False)
class Trace:
    """A loaded, recorded or imported trace (validated on construction).

    A trace holds at least one of ``scores_NLTE`` (tier ``"scores"``), ``topk_NLTK``
    (tier ``"ids"``) or ``loads_NLE`` (tier ``"counts"``); its :attr:`tier` is the
    highest it holds.

    Attributes
    ----------
    scores_NLTE : float32 ndarray, shape (N, L, T, E), or None
        Unbiased router scores.
    loads_NLE : int64 ndarray of shape (N, L, E), or None
        Token-slots per expert (the loads the model routed).
    metadata : dict
        JSON-serialisable description; its routing keys are validated into :attr:`semantics`.
    topk_NLTK : int64 ndarray of shape (N, L, T, K), or None
        The selected experts per token; ``-1`` marks an empty slot (a padding token).
    bias_NLE : float32 ndarray of shape (N, L, E), or None
        The bias each step was routed with.
    """

    scores_NLTE: np.ndarray | None
    loads_NLE: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    topk_NLTK: np.ndarray | None = None
    bias_NLE: np.ndarray | None = None
    semantics: RoutingSemantics = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = n_layers = t = e = None
        if self.scores_NLTE is not None:
            scores = np.asarray(self.scores_NLTE)
            if scores.ndim != 4:
                raise InvalidInputError(f"scores_NLTE must be 4-D (N, L, T, E), got shape {scores.shape}")
            if scores.dtype != np.float32:
                if not np.issubdtype(scores.dtype, np.floating):
                    raise InvalidInputError(f"scores_NLTE must be floating point, got {scores.dtype}")
                scores = scores.astype(np.float32)
            if min(scores.shape) == 0 or scores.shape[3] < 2:
                raise InvalidInputError(f"scores_NLTE must be non-empty with E >= 2, got shape {scores.shape}")
            if not np.isfinite(scores).all():
                raise InvalidInputError("scores_NLTE contains NaN or inf")
            object.__setattr__(self, "scores_NLTE", scores)
            n, n_layers, t, e = scores.shape
        if not isinstance(self.metadata, dict):
            raise InvalidInputError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        if self.loads_NLE is not None:
            object.__setattr__(self, "loads_NLE", _sem.check_loads(self.loads_NLE, (n, n_layers, e)))
            n, n_layers, e = self.loads_NLE.shape
        topk, bias, (n, n_layers, t, e) = _sem.check_ids_and_bias(
            self.topk_NLTK, self.bias_NLE, self.metadata, (n, n_layers, t, e))
        object.__setattr__(self, "topk_NLTK", topk)
        object.__setattr__(self, "bias_NLE", bias)
        try:
            json.dumps(self.metadata)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from exc
        sem = RoutingSemantics.from_metadata(self.metadata, n_layers, e)
        if sem.k is not None and self.topk_NLTK is not None and self.topk_NLTK.shape[3] != sem.k:
            raise InvalidInputError(f"topk_NLTK holds K = {self.topk_NLTK.shape[3]} ids per token, "
                                    f"the metadata says k = {sem.k}")
        object.__setattr__(self, "semantics", sem)
        object.__setattr__(self, "_dims", (int(n), int(n_layers), None if t is None else int(t), int(e)))

    @property
    def tier(self) -> str:
        """``"scores"``, ``"ids"`` or ``"counts"``: the highest level of router data held."""
        if self.scores_NLTE is not None:
            return "scores"
        return "ids" if self.topk_NLTK is not None else "counts"

    def require(self, tier: str, source: Any = "the trace") -> None:
        """Raise :class:`TierError` (one line) unless the trace holds ``tier`` or more.

        >>> try:
        ...     Trace(None, np.ones((1, 1, 3), np.int64)).require("scores", "t.npz")
        ... except TierError as exc:
        ...     print(exc)
        this needs a scores-tier trace; t.npz holds counts only
        """
        if tier not in TIERS:
            raise InvalidInputError(f"tier must be one of {TIERS}, got {tier!r}")
        if TIERS.index(self.tier) < TIERS.index(tier):
            raise TierError(f"this needs a {tier}-tier trace; {source} holds {self.tier} only")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, L, T, E)``; ``T`` is 0 for a counts-tier trace (it holds no tokens)."""
        n, n_layers, t, e = self._dims
        return (n, n_layers, 0 if t is None else t, e)

    def counts_NLE(self, select: Callable[..., Any] | None = None) -> tuple[np.ndarray, str]:
        """The loads ``(N, L, E)`` (int64) any tier gives, and a description of where they came from.

        Recorded loads first; else the selected ids counted (empty slots skipped); else
        the scores routed again with the trace's semantics (``k``, and the bias each step
        was routed with when recorded; no bias otherwise). A group-limited trace needs
        ``select`` (:func:`alflb.integrations.replay.replay_group_limited`).
        """
        return _sem.count_loads(self, select)

    def save(self, path: str | os.PathLike, compress: bool = False) -> Path:
        """Write the trace atomically (see the module docstring for the format)."""
        arrays: dict[str, Any] = {
            "format": np.asarray(TRACE_FORMAT),
            "version": np.asarray(TRACE_VERSION, dtype=np.int64),
        }
        if self.scores_NLTE is not None:
            arrays["scores_NLTE"] = self.scores_NLTE
        arrays["metadata"] = np.asarray(json.dumps(self.metadata))  # the order of version 1 files
        if self.loads_NLE is not None:
            arrays["loads_NLE"] = self.loads_NLE
        if self.topk_NLTK is not None:
            arrays["topk_NLTK"] = self.topk_NLTK
        if self.bias_NLE is not None and "bias_NLE" not in self.metadata:
            arrays["bias_NLE"] = self.bias_NLE
        return save_npz_atomic(path, compress=compress, **arrays)


def save_trace(
    path: str | os.PathLike,
    scores_NLTE: Any,
    loads_NLE: Any = None,
    metadata: dict[str, Any] | None = None,
    compress: bool = False,
    *,
    topk_NLTK: Any = None,
    bias_NLE: Any = None,
) -> Path:
    """Validate and write a trace file; returns its path.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "t.npz"
    >>> _ = save_trace(f, np.zeros((2, 1, 4, 3), np.float32), metadata={"k": 1})
    >>> load_trace(f).metadata
    {'k': 1}
    """
    trace = Trace(scores_NLTE, loads_NLE, dict(metadata or {}), topk_NLTK, bias_NLE)
    return trace.save(path, compress=compress)


def load_trace(path: str | os.PathLike) -> Trace:
    """Read and validate a trace file of any tier (never unpickles); see the module docstring.

    A transformers trace written before the ids moved into the trace file names a
    sidecar ``<stem>.topk.npz`` in its metadata (``topk_file``); its ``topk_NLTK`` and
    ``bias_NLE`` are read from there when the trace itself lacks them.
    """
    path = Path(path)
    data = load_npz(path)
    lower = any(name in data for name in ("topk_NLTK", "loads_NLE"))
    missing = [name for name in ("format", "version", "scores_NLTE", "metadata")
               if name not in data and not (name == "scores_NLTE" and lower)]
    if missing:
        raise CorruptFileError(f"{path} lacks the arrays {missing}; it holds {sorted(data)}")
    fmt, version = data["format"], data["version"]
    if fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != TRACE_FORMAT:
        raise CorruptFileError(f"{path}: not an alflb trace (format tag {fmt!r})")
    if version.shape != () or not np.issubdtype(version.dtype, np.integer):
        raise CorruptFileError(f"{path}: the version must be an integer scalar, got {version!r}")
    if int(version) != TRACE_VERSION:
        raise CorruptFileError(
            f"{path}: trace version {int(version)} is not supported (this alflb reads version {TRACE_VERSION})"
        )
    scores = data.get("scores_NLTE")
    if scores is not None and scores.dtype != np.float32:
        raise CorruptFileError(f"{path}: scores_NLTE must be float32, got {scores.dtype}")
    if scores is not None and scores.ndim != 4:
        raise CorruptFileError(f"{path}: scores_NLTE must be 4-D (N, L, T, E), got shape {scores.shape}")
    meta_raw = data["metadata"]
    if meta_raw.shape != () or meta_raw.dtype.kind != "U":
        raise CorruptFileError(f"{path}: metadata must be a JSON string")
    try:
        metadata = json.loads(str(meta_raw))
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path}: metadata is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise CorruptFileError(f"{path}: metadata must be a JSON object, got {type(metadata).__name__}")
    for name in ("loads_NLE", "topk_NLTK"):
        arr = data.get(name)
        if arr is not None and not np.issubdtype(arr.dtype, np.integer):
            raise CorruptFileError(f"{path}: {name} must be integers, got {arr.dtype}")
    extra = {} if "topk_NLTK" in data else _sem.sidecar(path, metadata)
    topk = data.get("topk_NLTK", extra.get("topk_NLTK"))
    bias = data.get("bias_NLE", extra.get("bias_NLE"))
    if bias is None and "bias_NLE" in metadata:  # the trainer writes the biases into the metadata
        bias = metadata["bias_NLE"]
    try:
        if bias is not None and scores is not None and np.shape(bias)[:1] != scores.shape[:1]:
            bias = None  # a sidecar cut into other steps than the trace (tokens_per_step)
        return Trace(scores, data.get("loads_NLE"), metadata, topk, bias)
    except (InvalidInputError, ValueError) as exc:
        raise CorruptFileError(f"{path}: {exc}") from exc


def import_trace(path: str | os.PathLike, format: str = "alflb", **options: Any) -> Trace:
    """Read a trace written by alflb or by another system's recorder.

    ``format="alflb"`` is :func:`load_trace`; the others (``alflb.importers.FORMATS``,
    e.g. ``"sglang"``) are read by :func:`alflb.importers.read_dump`, whose arrays and
    metadata are validated here like any trace. ``options`` go to the importer.
    """
    if format == "alflb":
        return load_trace(path)
    from .importers import read_dump

    dump = read_dump(path, format, **options)
    try:
        return Trace(dump.get("scores_NLTE"), dump.get("loads_NLE"), dump["metadata"],
                     dump.get("topk_NLTK"), dump.get("bias_NLE"))
    except InvalidInputError as exc:
        raise CorruptFileError(f"{path}: {exc}") from exc


class TraceRecorder:
    """Record router scores, from PyTorch modules with forward hooks or handed over per step.

    Parameters
    ----------
    modules : sequence of torch.nn.Module, or None
        One module per MoE layer, in layer order; ``None`` registers no hook: every step
        is handed over whole with :meth:`add_step` (a trainer that gathers the scores of
        several ranks does this).
    source : {"output", "input"}
        Record what the module returns, or what it receives.
    index : int
        Which element when the output (or the positional input) is a tuple/list.
    transform : callable, optional
        Applied to the captured tensor before flattening (e.g. ``torch.sigmoid`` when the
        module returns logits).
    only_training : bool
        Skip calls made while the module is in eval mode (docs/theory.md section 3: loads and traces
        come from training steps).

    Each capture is detached, cast to float32, moved to the CPU and reshaped to
    ``(-1, E)``. :meth:`end_step` closes a step; :meth:`to_trace` / :meth:`save` build the
    file; :meth:`close` removes the hooks (also on ``with`` exit). A step may carry its
    loads ``(L, E)`` (written as ``loads_NLE`` when every step has them), the biases it was
    routed with ``(L, E)`` (:attr:`bias_NLE`) and a label such as its optimiser step
    (:attr:`labels`); the caller decides what of these goes into the metadata.
    """

    def __init__(
        self,
        modules: Sequence[Any] | None,
        *,
        source: str = "output",
        index: int = 0,
        transform: Callable[[Any], Any] | None = None,
        only_training: bool = False,
    ) -> None:
        if source not in ("output", "input"):
            raise InvalidInputError(f"source must be 'output' or 'input', got {source!r}")
        if modules is None:
            modules = []
        else:
            modules = list(modules)
            if not modules:
                raise InvalidInputError("TraceRecorder needs at least one module (or None: no hooks)")
        self._source, self._index, self._transform = source, int(index), transform
        self._only_training = bool(only_training)
        self._current: list[list[np.ndarray]] = [[] for _ in modules]
        self._steps: list[np.ndarray] = []  # each (L, T, E) float32
        self._loads: list[np.ndarray | None] = []  # each (L, E) int64
        self._biases: list[np.ndarray | None] = []  # each (L, E) float32
        self._labels: list[int | None] = []
        self._handles = [
            m.register_forward_hook(self._make_hook(layer)) for layer, m in enumerate(modules)
        ]

    def _make_hook(self, layer: int) -> Callable[..., None]:
        def hook(module: Any, args: tuple, output: Any) -> None:
            if self._only_training and not module.training:
                return
            value = output if self._source == "output" else args
            if isinstance(value, (tuple, list)):
                value = value[self._index]
            if not is_torch(value):
                raise InvalidInputError(
                    f"layer {layer}: the recorded {self._source} is not a tensor ({type(value).__name__})"
                )
            if self._transform is not None:
                value = self._transform(value)
            arr = value.detach().float().cpu().numpy()
            self._current[layer].append(arr.reshape(-1, arr.shape[-1]))

        return hook

    @property
    def n_steps(self) -> int:
        """Steps closed so far."""
        return len(self._steps)

    @property
    def labels(self) -> list[int | None]:
        """The label of every closed step (``None`` where none was given)."""
        return list(self._labels)

    @property
    def bias_NLE(self) -> np.ndarray:
        """The biases of the closed steps, ``(N, L, E)`` float32 (every step must carry them)."""
        if any(b is None for b in self._biases):
            raise InvalidInputError("bias_NLE: some recorded steps carry no biases")
        return np.stack(self._biases)

    def end_step(self, *, load_LE: Any = None, bias_LE: Any = None, label: int | None = None) -> None:
        """Close the current step: every layer must have been seen, with the same token count."""
        if not self._current:
            raise InvalidInputError("end_step: this recorder has no hooks; hand steps over with add_step")
        missing = [layer for layer, chunks in enumerate(self._current) if not chunks]
        if missing:
            raise InvalidInputError(f"end_step: layers {missing} produced no scores in this step")
        per_layer = [np.concatenate(chunks, axis=0) for chunks in self._current]
        shapes = {a.shape for a in per_layer}
        if len(shapes) != 1:
            raise InvalidInputError(f"end_step: layers disagree on (tokens, experts): {sorted(shapes)}")
        self._current = [[] for _ in self._current]
        self.add_step(np.stack(per_layer), load_LE=load_LE, bias_LE=bias_LE, label=label)

    def add_step(self, scores_LTE: Any, *, load_LE: Any = None, bias_LE: Any = None,
                 label: int | None = None) -> None:
        """Append one whole step: scores ``(L, T, E)``, optionally its loads, biases and label."""
        scores = np.asarray(scores_LTE, dtype=np.float32)
        if scores.ndim != 3:
            raise InvalidInputError(f"add_step: scores must be (L, T, E), got shape {scores.shape}")
        if self._steps and self._steps[0].shape != scores.shape:
            raise InvalidInputError(
                f"a step has (L, T, E) = {scores.shape}, earlier steps had "
                f"{self._steps[0].shape}"
            )
        self._steps.append(scores)
        self._loads.append(None if load_LE is None else np.asarray(load_LE, dtype=np.int64))
        self._biases.append(None if bias_LE is None else np.asarray(bias_LE, dtype=np.float32))
        self._labels.append(None if label is None else int(label))

    def add_trace(self, trace: Trace, *, labels: Sequence[int] | None = None,
                  bias_NLE: Any = None) -> None:
        """Append every step of a loaded :class:`Trace` (with its loads), e.g. to continue one."""
        for n, scores_LTE in enumerate(trace.scores_NLTE):
            self.add_step(scores_LTE, load_LE=None if trace.loads_NLE is None else trace.loads_NLE[n],
                          bias_LE=None if bias_NLE is None else bias_NLE[n],
                          label=None if labels is None else labels[n])

    def keep_until(self, label: int) -> None:
        """Drop the steps labelled after ``label`` (a resumed run records them again)."""
        keep = [i for i, lab in enumerate(self._labels) if lab is not None and lab <= label]
        for name in ("_steps", "_loads", "_biases", "_labels"):
            old = getattr(self, name)
            setattr(self, name, [old[i] for i in keep])

    def to_trace(self, metadata: dict[str, Any] | None = None) -> Trace:
        """The closed steps as a :class:`Trace`."""
        if not self._steps:
            raise InvalidInputError("no step recorded: call end_step() after each step")
        loads = None if any(a is None for a in self._loads) else np.stack(self._loads)
        return Trace(np.stack(self._steps), loads, dict(metadata or {}))

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write the closed steps to ``path``."""
        return self.to_trace(metadata).save(path)

    def close(self) -> None:
        """Remove the hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
