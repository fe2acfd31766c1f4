"""Routing semantics and tiers of router traces (:mod:`alflb.traces`), and counting loads from any tier.

Shape legend: ``N`` steps, ``L`` MoE layers, ``T`` tokens, ``E`` experts, ``K`` top-k.
Sign convention: the router adds the bias to the scores for selection only; an
overloaded expert's bias goes down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .runio import load_npz

__all__ = ["TIERS", "RoutingSemantics", "TierError", "check_ids_and_bias", "check_loads", "count_loads", "sidecar"]

TIERS = ("counts", "ids", "scores")  # each level holds what the ones before it hold


class TierError(InvalidInputError):
    """An analysis was handed a trace of a lower tier than it needs (one line says which)."""


@dataclass(frozen=True)
class RoutingSemantics:
    """How the routing that produced a trace worked, as its metadata states it.

    Every field is ``None`` where the trace does not say. The router adds the bias to
    the scores for selection only; an overloaded expert's bias goes down.

    Attributes
    ----------
    k : int or None
        Experts per token.
    score_func : str or None
        What turned logits into scores (``"sigmoid"``, ``"softmax"``, ...).
    n_group, topk_group : int or None
        Group-limited routing (DeepSeek-V3): ``E`` experts in ``n_group`` groups, tokens
        choose among the ``topk_group`` best groups; ``n_group == 1`` is plain top-K.
    route_scale : float or None
        The factor applied to the gates (does not change the selection).
    counting : dict or None
        How the loads were counted (which forwards, tokens, ranks were included).
    bias_at_record_LE : list of (list of float or None) or None
        The bias of each layer at the start of the recording (``None`` for a layer
        whose router has no bias).
    """

    k: int | None = None
    score_func: str | None = None
    n_group: int | None = None
    topk_group: int | None = None
    route_scale: float | None = None
    counting: dict[str, Any] | None = None
    bias_at_record_LE: list[Any] | None = None

    @property
    def group_limited(self) -> bool:
        """True when tokens choose among fewer groups than there are."""
        return bool(self.n_group and self.topk_group and self.topk_group < self.n_group)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], n_layers: int, n_experts: int | None) -> RoutingSemantics:
        """Read and validate the semantic keys of a trace's metadata (absent keys give ``None``)."""

        def whole(key: str, low: int, high: int | None) -> int | None:
            value = metadata.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidInputError(f"metadata {key!r} must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                raise InvalidInputError(
                    f"metadata {key!r} = {value} is out of range [{low}, {'inf' if high is None else high}]")
            return int(value)

        k = whole("k", 1, n_experts)
        n_group = whole("n_group", 1, n_experts)
        topk_group = whole("topk_group", 1, n_group)
        if n_group is not None and n_experts is not None and n_experts % n_group:
            raise InvalidInputError(f"metadata 'n_group' = {n_group} does not divide E = {n_experts} experts")
        if n_group is not None and n_group > 1 and topk_group is None:
            raise InvalidInputError("metadata gives 'n_group' > 1 without 'topk_group'")
        score_func = metadata.get("score_func", metadata.get("activation"))
        if score_func is not None and (not isinstance(score_func, str) or not score_func):
            raise InvalidInputError(f"metadata 'score_func' must be a non-empty string, got {score_func!r}")
        route_scale = metadata.get("route_scale")
        if route_scale is not None:
            if isinstance(route_scale, bool) or not isinstance(route_scale, (int, float)) \
                    or not np.isfinite(route_scale) or route_scale <= 0:
                raise InvalidInputError(f"metadata 'route_scale' must be a positive number, got {route_scale!r}")
            route_scale = float(route_scale)
        counting = metadata.get("counting")
        if isinstance(counting, str):
            counting = {"description": counting}
        if counting is not None and not isinstance(counting, dict):
            raise InvalidInputError(f"metadata 'counting' must be an object or a string, got {counting!r}")
        bias = metadata.get("bias_at_record_LE")
        if bias is not None:
            if not isinstance(bias, list) or len(bias) != n_layers:
                raise InvalidInputError(f"metadata 'bias_at_record_LE' must list L = {n_layers} layers")
            for layer, b in enumerate(bias):
                if b is not None and (not isinstance(b, list) or (n_experts is not None and len(b) != n_experts)
                                      or not np.isfinite(np.asarray(b, dtype=np.float64)).all()):
                    raise InvalidInputError(
                        f"metadata 'bias_at_record_LE' layer {layer} must be E = {n_experts} finite numbers or null")
        return cls(k, score_func, n_group, topk_group, route_scale, counting, bias)

    def describe(self) -> str:
        """One line: ``k=2, score_func=sigmoid, groups 4 keep 2, route_scale=2.5``."""
        parts = [f"k={self.k}" if self.k is not None else "k unknown",
                 f"score_func={self.score_func}" if self.score_func else "score_func unknown"]
        if self.n_group is not None:
            parts.append(f"groups {self.n_group} keep {self.topk_group}" if self.n_group > 1 else "no groups")
        if self.route_scale is not None:
            parts.append(f"route_scale={self.route_scale:g}")
        return ", ".join(parts)




def _plain_topk(scores_TE: np.ndarray, bias_E: np.ndarray, k: int, n_group: int, topk_group: int) -> np.ndarray:
    """Plain top-K of the biased scores, ``(T, K)``."""
    return np.argsort(-(scores_TE + bias_E), axis=-1, kind="stable")[:, :k]


def count_loads(trace: Any, select: Callable[..., Any] | None = None) -> tuple[np.ndarray, str]:
    """The body of :meth:`alflb.traces.Trace.counts_NLE` (see there)."""
    n, n_layers, _, e = trace.shape
    if trace.loads_NLE is not None:
        return trace.loads_NLE, "recorded loads"
    out = np.zeros((n, n_layers, e), dtype=np.int64)
    if trace.topk_NLTK is not None:
        for i in range(n):
            for layer in range(n_layers):
                ids = trace.topk_NLTK[i, layer].ravel()
                out[i, layer] = np.bincount(ids[ids >= 0], minlength=e)
        return out, "counted from the selected ids"
    k = trace.semantics.k
    if k is None:
        raise InvalidInputError("the trace has no loads, no selected ids and no metadata 'k' to route with")
    n_group = trace.semantics.n_group or 1
    topk_group = trace.semantics.topk_group or 1
    if select is None:
        if n_group > 1:
            raise InvalidInputError(
                f"the trace was routed group-limited (n_group = {n_group}): count its loads with "
                "select=alflb.integrations.replay.replay_group_limited")
        select = _plain_topk
    for i in range(n):
        for layer in range(n_layers):
            bias_E = np.zeros(e, np.float32) if trace.bias_NLE is None else trace.bias_NLE[i, layer]
            ids = select(trace.scores_NLTE[i, layer], bias_E, k, n_group, topk_group)
            out[i, layer] = np.bincount(ids.ravel(), minlength=e)
    how = "with the recorded bias" if trace.bias_NLE is not None else "no bias"
    groups = f", groups {n_group} keep {topk_group}" if n_group > 1 else ""
    return out, f"top-{k} of the recorded scores{groups}, {how}"


def check_ids_and_bias(topk_NLTK: Any, bias_NLE: Any, metadata: dict[str, Any],
                       dims: tuple[Any, Any, Any, Any]) -> tuple[Any, Any, tuple[Any, Any, Any, Any]]:
    """Validate a trace's ``topk_NLTK`` and ``bias_NLE`` against the dimensions known so far.

    ``dims`` is ``(N, L, T, E)`` from the scores and loads (``None`` where unknown);
    returns the arrays (int64, float32 or ``None``) and the completed dimensions.
    """
    n, n_layers, t, e = dims
    topk_out = bias_out = None
    if e is None and metadata.get("n_experts") is not None:
        e = metadata["n_experts"]
        if isinstance(e, bool) or not isinstance(e, int) or e < 1:
            raise InvalidInputError(f"metadata 'n_experts' must be a positive integer, got {e!r}")
    if topk_NLTK is not None:
        topk = np.asarray(topk_NLTK)
        if topk.ndim != 4 or topk.size == 0:
            raise InvalidInputError(f"topk_NLTK must be non-empty 4-D (N, L, T, K), got shape {topk.shape}")
        if not np.issubdtype(topk.dtype, np.integer):
            raise InvalidInputError(f"topk_NLTK must be integer expert ids, got {topk.dtype}")
        if n is not None and topk.shape[:2] != (n, n_layers):
            raise InvalidInputError(f"topk_NLTK must have (N, L) = {(n, n_layers)}, got {topk.shape[:2]}")
        if t is not None and topk.shape[2] != t:
            raise InvalidInputError(f"topk_NLTK must have T = {t} tokens, got {topk.shape[2]}")
        if e is None:
            raise InvalidInputError("an ids-only trace must state its number of experts: metadata 'n_experts'")
        if (topk < -1).any() or (topk >= e).any():
            raise InvalidInputError(f"topk_NLTK ids must lie in [0, {e}) (or -1 for an empty slot)")
        topk_out = topk.astype(np.int64)
        n, n_layers, t = topk.shape[:3]
    if n is None:
        raise InvalidInputError("a trace needs scores_NLTE, topk_NLTK or loads_NLE")
    if bias_NLE is not None:
        bias = np.asarray(bias_NLE, dtype=np.float32)
        if bias.shape != (n, n_layers, e):
            raise InvalidInputError(f"bias_NLE must have shape (N, L, E) = {(n, n_layers, e)}, got {bias.shape}")
        if not np.isfinite(bias).all():
            raise InvalidInputError("bias_NLE contains NaN or inf")
        bias_out = bias
    return topk_out, bias_out, (n, n_layers, t, e)


def sidecar(path: Path, metadata: dict[str, Any]) -> dict[str, np.ndarray]:
    """The selected ids and biases of an older transformers trace's ``<stem>.topk.npz``."""
    name = metadata.get("topk_file")
    if not isinstance(name, str) or Path(name).name != name:
        return {}
    side = path.with_name(name)
    if not side.is_file():
        return {}
    data = load_npz(side)
    return {key: data[key] for key in ("topk_NLTK", "bias_NLE") if key in data}


def check_loads(loads_NLE: Any, dims: tuple[Any, Any, Any]) -> np.ndarray:
    """Validate a trace's loads against ``(N, L, E)`` from its scores (``None`` where unknown)."""
    loads = np.asarray(loads_NLE)
    if loads.ndim != 3 or (dims[0] is not None and loads.shape != dims):
        want = "(N, L, E)" if dims[0] is None else f"(N, L, E) = {dims}"
        raise InvalidInputError(f"loads_NLE must have shape {want}, got {loads.shape}")
    if not np.issubdtype(loads.dtype, np.integer):
        raise InvalidInputError(f"loads_NLE must be integer counts, got {loads.dtype}")
    if loads.size == 0:
        raise InvalidInputError(f"loads_NLE must be non-empty, got shape {loads.shape}")
    if (loads < 0).any():
        raise InvalidInputError("loads_NLE must be non-negative")
    return loads.astype(np.int64)
