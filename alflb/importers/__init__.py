"""Importers of other systems' router recordings (read into alflb traces by :func:`alflb.traces.import_trace`).

Each format names the tier it yields (``alflb.traces.TIERS``):

=====================  ======  =================================================================
format                 tier    file
=====================  ======  =================================================================
``sglang``             counts  SGLang's expert-distribution recorder dump in ``stat`` (or
                               ``stat_approx``) mode: ``expert_distribution_recorder_<t>.pt``
``sglang``             counts  the same recorder in ``per_pass`` mode (``records`` of
                               ``global_physical_count``)
``sglang``             ids     the same recorder in ``per_token`` mode (``records`` of
                               ``topk_ids_of_layer``): ``expert_distribution_recorder_<t>_<rank>.pt``
``megatron``           ids     ``torch.save`` of Megatron-core's ``RouterReplay.get_recorded_data()``
                               (one ``(tokens, topk)`` index tensor per MoE layer), or a list of
                               them, one per step; needs ``n_experts=``
=====================  ======  =================================================================

The SGLang mode is read from the file's keys (:mod:`alflb.importers.sglang`); the Megatron
layouts are those of :mod:`alflb.importers.megatron`.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import InvalidInputError

__all__ = ["FORMATS", "read_dump"]

FORMATS = ("alflb", "sglang", "megatron")


def read_dump(path: str | os.PathLike, format: str, **options: Any) -> dict[str, Any]:
    """Read ``path`` written in ``format`` (one of :data:`FORMATS` but ``"alflb"``).

    Returns the arrays and metadata of an alflb trace (``scores_NLTE``, ``loads_NLE``,
    ``topk_NLTK``, ``bias_NLE``, each possibly ``None``, and ``metadata``), which
    :func:`alflb.traces.import_trace` validates into a :class:`~alflb.traces.Trace`.
    """
    if format == "sglang":
        from .sglang import read_sglang

        return read_sglang(path, **options)
    if format == "megatron":
        from .megatron import read_megatron

        return read_megatron(path, **options)
    raise InvalidInputError(f"unknown trace format {format!r}; available: {', '.join(FORMATS)}")
