"""Helpers of the differential tests against megatron-core and torchtitan (CPU only).

The reference packages are an optional extra (``pip install alflb[ref]`` with ``--no-deps``,
see docs/frameworks.md); the tests that need them skip with the reason when absent.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from alflb.model import ModelConfig
from alflb.model.transformer import Router, RouterOutput
from alflb.semantics import Semantics, get_semantics


def import_megatron_moe():
    """megatron-core's MoE helpers (``megatron.core.transformer.moe``), or skip."""
    pytest.importorskip("megatron.core", reason="megatron-core==0.16.1 not installed (optional extra 'ref')")
    from megatron.core.transformer.moe import moe_utils, router

    return moe_utils, router


def import_torchtitan_moe():
    """torchtitan's MoE router and its optimizer hook, or skip.

    torchtitan 0.3.0's token dispatcher imports a Triton kernel module at import time;
    these tests never dispatch tokens, so that one module is replaced by an empty stub.
    """
    pytest.importorskip("torchtitan", reason="torchtitan==0.3.0 not installed (optional extra 'ref')")
    name = "torchtitan.distributed.minimal_async_ep.kernels"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.__getattr__ = lambda attr: None  # every kernel name resolves to None; never called here
        sys.modules[name] = stub
    try:
        from torchtitan.components.optimizer import optimizer
        from torchtitan.models.common import linear, moe
    except ImportError as exc:  # a missing small dependency of torchtitan (spmd-types, tyro, ...)
        pytest.skip(f"torchtitan==0.3.0 does not import here: {exc}")
    return moe, linear, optimizer


def tied_logits(rng: np.random.Generator, T: int, E: int, skew: float = 1.0) -> torch.Tensor:
    """fp32 logits with many exact ties (values on a grid of 1/8) and a skew towards low experts."""
    grid = np.round(rng.normal(size=(T, E)) * 8) / 8 + skew * np.linspace(1.0, 0.0, E)
    return torch.tensor(grid, dtype=torch.float32)


def make_router(E: int, K: int, *, semantics: str | Semantics, n_groups: int = 1, topk_groups: int = 1,
                route_scale: float = 1.0, normalize_gates: bool = True) -> Router:
    """An alflb router whose logits equal its input (the weight is the identity)."""
    name = semantics if isinstance(semantics, str) else "alflb"
    cfg = ModelConfig(d_model=E, n_heads=2, n_routed_experts=E, top_k=K, n_groups=n_groups,
                      topk_groups=topk_groups, route_scale=route_scale, normalize_gates=normalize_gates,
                      semantics=name)
    router = Router(cfg)
    router.semantics = get_semantics(semantics)  # a mutated Semantics for the mutation tests
    with torch.no_grad():
        router.weight.copy_(torch.eye(E))
    return router.eval()


def route(router: Router, logits_TE: torch.Tensor, bias_E: torch.Tensor | None = None,
          batch_size: int = 1) -> RouterOutput:
    if bias_E is not None:
        with torch.no_grad():
            router.expert_bias.copy_(bias_E)
    return router(logits_TE, batch_size=batch_size)


def as_map(topk_TK: torch.Tensor, E: int) -> torch.Tensor:
    """(T, E) bool routing map of the chosen experts."""
    return torch.zeros(topk_TK.shape[0], E, dtype=torch.bool).scatter_(1, topk_TK, True)


def dense_gates(topk_TK: torch.Tensor, gates_TK: torch.Tensor, E: int) -> torch.Tensor:
    return torch.zeros(topk_TK.shape[0], E, dtype=gates_TK.dtype).scatter_(1, topk_TK, gates_TK)
