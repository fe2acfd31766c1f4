r"""Data-parallel training with ``torch.distributed``: the process group, sharding, collectives.

Every collective of the package goes through :class:`DistContext` (``all_reduce``,
``all_gather``, ``barrier``, ``on_main``), which names the operation in the
:class:`DistributedError` of a failed or timed-out call. This module knows nothing of the
model: evaluation sharding lives in :mod:`alflb.model.evaluate`, the local launcher and
the interrupt request in :mod:`alflb.model.launch`.

Shape legend: ``B`` sequences, ``T`` positions (or tokens), ``E`` experts, ``L`` MoE
layers, ``W`` ranks (the world size).

One optimiser step over ``W`` ranks reads the *same* global batch of ``B`` sequences as a
single-process run with the same seed (batch ``n`` is drawn from ``(seed, n)``): rank
``r`` takes the contiguous shard ``[r B/W, (r+1) B/W)`` and splits it into ``grad_accum``
micro-batches of ``B / (W grad_accum)`` sequences. The expert loads of the step are

.. math::

    A_{lk} = \sum_{r < W} \sum_{m < G} A^{(r, m)}_{lk},

summed over ranks and micro-batches with **one** ``all_reduce`` per optimiser step: the
``(L, E)`` counts of every layer, the loss sums and the stop flag (an interrupt seen by
any rank) travel in one float64 vector (integer counts below ``2**53`` are exact in
float64). Every rank then runs the same pure rule of :mod:`alflb.rules` on the same
counts, so the biases stay identical without a broadcast; ``DistConfig.check_sync``
verifies it (and a parameter checksum) after every step with one ``all_gather``.

Sign convention: the router adds the bias; an overloaded expert's bias goes down.

Mechanics
---------
- Gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel` with
  ``broadcast_buffers=False`` (``forward_sync_buffers=False`` in newer torch): DDP's default re-broadcasts rank 0's buffers before every
  forward, which would overwrite each rank's ``load_count`` with rank 0's (and is not
  needed for ``expert_bias``, replicated by construction). The hand-written
  backwards of the routed experts (fused and ``grouped_mm``) return ordinary parameter
  gradients, so DDP's bucketed hooks
  apply unchanged; ``no_sync`` skips the gradient all-reduce on all micro-batches but
  the last.
- ``global_aux`` reduces its running counts (and token count) across ranks at every
  micro-batch (one more ``all_reduce`` of the ``(L, E)`` counts per micro-batch, this
  mode only), as Megatron-core's global-batch loss does.
- Evaluation is sharded over ranks (windows ``r, r + W, ...``), in eval mode (nothing is
  counted), and its loss sum and loads are reduced, so every rank holds the same result.
- Rank 0 alone writes the run folder (logs, plots, traces, checkpoints); every
  checkpoint is followed by a barrier. The data position is in global-batch units and
  the optimiser state is replicated, so a checkpoint resumes under any world size that
  divides ``batch_size / grad_accum``.
- ``MaxVio_computation_batch`` is the MaxVio of one micro-batch on one rank (Wang et al.'s
  computation batch); ``metrics.csv`` reports its mean over rank 0's micro-batches and
  over MoE layers.

Failure handling: the process group has a timeout (``DistConfig.timeout_s``); a
collective that fails (a peer exited: gloo sees the closed connection at once) or times
out (a peer hangs) raises :class:`DistributedError` naming the rank and the operation.
Under ``torchrun`` the elastic agent stops the other workers when one exits non-zero;
:func:`alflb.model.launch.launch_local` does the same for the ``--nproc`` launcher and names the failed rank.

Launch::

    torchrun --nproc_per_node 2 -m alflb train --preset tiny --out runs/ddp
    alflb train --preset tiny --out runs/ddp --nproc 2        # local CPU processes

Backends: NCCL when the device is CUDA (one GPU per local rank), gloo on CPU.

References
----------
.. [W] L. Wang et al., arXiv:2408.15664 (2024): MaxVio, the computation batch.
.. [Q] Z. Qiu et al., Demons in the Detail, arXiv:2501.11873 (global-batch statistics).
.. [V3] DeepSeek-AI, arXiv:2412.19437 (2024): counts over the global batch.

Examples
--------
>>> ctx = DistContext()  # a single process
>>> ctx.world_size, ctx.is_main, ctx.enabled
(1, True, False)
>>> x = torch.arange(8).view(8, 1)
>>> shard_batch(x, rank=1, world_size=2).flatten().tolist()
[4, 5, 6, 7]
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist

from .._validate import finite_float
from ..errors import AlflbError, InvalidInputError

__all__ = [
    "DistConfig",
    "DistContext",
    "DistributedError",
    "backward_guard",
    "check_replicated",
    "check_shardable",
    "gather_tokens",
    "reduce_step",
    "setup_distributed",
    "shard_batch",
    "sync_context",
    "teardown_distributed",
    "wrap_model",
]


class DistributedError(AlflbError, RuntimeError):
    """A collective failed or timed out (a peer rank exited or hangs), or replicas diverged."""


@dataclass(frozen=True, kw_only=True)
class DistConfig:
    """Run-time settings of data-parallel training (not part of the run's configuration)."""

    timeout_s: float = 300.0  # process-group timeout: a collective waits at most this long
    check_sync: bool = False  # verify after every step that biases and parameters agree

    def __post_init__(self) -> None:
        finite_float(self.timeout_s, "timeout_s", minimum=0.0, strict=True)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world size, its device and backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" or "nccl"; None for a single process
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout_s: float = 300.0
    owns_group: bool = False  # this module initialised the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that logs and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one rank (collectives are needed)."""
        return self.world_size > 1

    def barrier(self, what: str = "barrier") -> None:
        if self.enabled:
            with collective(self, what):
                tdist.barrier()

    def all_reduce(self, x: torch.Tensor, what: str) -> torch.Tensor:
        """``x`` summed over ranks, in place (one ``all_reduce``); ``x`` itself on one rank."""
        if self.enabled:
            with collective(self, what):
                tdist.all_reduce(x)
        return x

    def all_gather(self, x: torch.Tensor, what: str) -> list[torch.Tensor]:
        """Every rank's ``x`` (same shape on every rank), in rank order."""
        if not self.enabled:
            return [x]
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        with collective(self, what):
            tdist.all_gather(parts, x.contiguous())
        return parts

    def reduce_counts(self, counts_LE: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, int]:
        """Running ``(L, E)`` counts and their token count summed over ranks (one ``all_reduce``).

        ``global_aux``'s loss calls it at every micro-batch (the trainer injects it into the
        :class:`~alflb.model.balancing.Balancer`). One rank gets its inputs back.
        """
        if not self.enabled:
            return counts_LE, n_tokens
        packed = torch.cat([counts_LE.reshape(-1), counts_LE.new_tensor([n_tokens])])
        self.all_reduce(packed, "the all-reduce of global_aux's running counts")
        return packed[:-1].view_as(counts_LE), int(packed[-1])

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and hand its result (or its error) to every rank.

        An :class:`~alflb.errors.AlflbError` raised on rank 0 is raised again, with the
        same class and message, on every rank, so no rank waits for a failed one.
        """
        if not self.enabled:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except AlflbError as exc:
                box[0] = ("error", exc)
                with collective(self, "broadcast of rank 0's result"):
                    tdist.broadcast_object_list(box, src=0)
                raise
        with collective(self, "broadcast of rank 0's result"):
            tdist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value


@contextlib.contextmanager
def collective(ctx: DistContext, what: str) -> Iterator[None]:
    """Turn a failed or timed-out collective into a :class:`DistributedError` with context."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as exc:  # gloo/NCCL errors, DistBackendError, timeouts
        raise DistributedError(
            f"rank {ctx.rank} of {ctx.world_size}: {what} failed: another rank has exited or did not "
            f"answer within the process-group timeout of {ctx.timeout_s:g} s ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})"
        ) from exc


def setup_distributed(device: torch.device, cfg: DistConfig | None = None) -> DistContext:
    """The process group of a ``torchrun`` (or :func:`launch_local`) worker, or a single process.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``)
    from the environment. With ``WORLD_SIZE > 1`` it initialises the group (NCCL when
    ``device`` is CUDA, one GPU per local rank; gloo otherwise) with the timeout of
    ``cfg``; an already initialised group is used as it is.
    """
    cfg = cfg or DistConfig()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if tdist.is_available() and tdist.is_initialized():
        world = tdist.get_world_size()
    if world <= 1:
        return DistContext(device=device, timeout_s=cfg.timeout_s)
    if not tdist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            tdist.init_process_group(backend=backend, timeout=timedelta(seconds=cfg.timeout_s))
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(
                f"cannot join the process group of {world} ranks (rank {os.environ.get('RANK')}, "
                f"MASTER_ADDR={os.environ.get('MASTER_ADDR')}, MASTER_PORT={os.environ.get('MASTER_PORT')}, "
                f"timeout {cfg.timeout_s:g} s): {exc}"
            ) from exc
        owns = True
    return DistContext(rank=tdist.get_rank(), world_size=tdist.get_world_size(), local_rank=local_rank,
                       backend=tdist.get_backend(), device=device, timeout_s=cfg.timeout_s, owns_group=owns)


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup_distributed` made it."""
    if ctx.owns_group and tdist.is_initialized():
        tdist.destroy_process_group()


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``DistributedDataParallel(model, broadcast_buffers=False)`` on several ranks, else ``model``."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # Buffers must not be re-broadcast before each forward (rank-local load counts); the
    # sync at construction is harmless (counts are 0, biases equal). Newer torch spells
    # the option forward_sync_buffers and deprecates broadcast_buffers.
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    with collective(ctx, "DistributedDataParallel's initial parameter broadcast"):
        return DistributedDataParallel(model, device_ids=ids, **no_sync)


def sync_context(net: torch.nn.Module, sync: bool):
    """``net.no_sync()`` for a DDP model on a micro-batch that must not all-reduce yet."""
    if sync or not hasattr(net, "no_sync"):
        return contextlib.nullcontext()
    return net.no_sync()


def backward_guard(ctx: DistContext, sync: bool):
    """:func:`collective` around the backward that runs DDP's gradient all-reduce (multi-rank only)."""
    if not (ctx.enabled and sync):
        return contextlib.nullcontext()
    return collective(ctx, "the gradient all-reduce (DDP backward)")


# ------------------------------------------------------------------------ sharding


def check_shardable(batch_size: int, grad_accum: int, world_size: int) -> None:
    """Raise unless ``batch_size`` splits into ``world_size`` ranks of ``grad_accum`` micro-batches."""
    if batch_size % (world_size * grad_accum):
        raise InvalidInputError(
            f"batch_size={batch_size} must be a multiple of world_size * grad_accum = "
            f"{world_size} * {grad_accum} (each rank takes batch_size / world_size sequences "
            "in grad_accum micro-batches)"
        )


def shard_batch(x_B: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous share ``[r B/W, (r+1) B/W)`` of a global batch (first axis)."""
    B = x_B.shape[0]
    if B % world_size:
        raise InvalidInputError(f"a global batch of {B} sequences does not split into {world_size} ranks")
    per = B // world_size
    return x_B[rank * per:(rank + 1) * per]


# ------------------------------------------------------------------- collectives


def reduce_step(ctx: DistContext, loads_LE: torch.Tensor, sums: Sequence[float],
                stop: bool) -> tuple[torch.Tensor, list[float], bool]:
    """One ``all_reduce`` (sum) of the step: per-layer loads, loss sums, and the stop flag.

    Returns the global ``(L, E)`` int64 loads, the summed scalars, and whether any rank
    asked to stop. A single process gets its inputs back unchanged.
    """
    if not ctx.enabled:
        return loads_LE, list(sums), stop
    packed = torch.cat([
        loads_LE.reshape(-1).to(torch.float64),
        torch.tensor([*sums, float(stop)], dtype=torch.float64, device=loads_LE.device),
    ])
    ctx.all_reduce(packed, "the all-reduce of the step's expert counts")
    n = loads_LE.numel()
    out_LE = packed[:n].round().to(torch.int64).view_as(loads_LE)
    rest = packed[n:].tolist()
    return out_LE, rest[:-1], rest[-1] > 0


def gather_tokens(ctx: DistContext, x_LTE: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``(L, T, E)`` along ``T`` in rank order (the global batch order)."""
    if not ctx.enabled:
        return x_LTE
    return torch.cat(ctx.all_gather(x_LTE, "the all-gather of traced router scores"), dim=1)


def check_replicated(ctx: DistContext, model: torch.nn.Module, bias_LE: torch.Tensor, step: int) -> None:
    """Raise :class:`DistributedError` unless every rank holds the same biases and parameters.

    Compares, bit for bit, the ``(L, E)`` biases and one float64 sum per parameter
    tensor (one ``all_gather``).
    """
    if not ctx.enabled:
        return
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
        mine = torch.cat([bias_LE.reshape(-1).double().to(sums.device), sums])
    parts = ctx.all_gather(mine, "the replica check")
    nb = bias_LE.numel()
    for r, other in enumerate(parts):
        if not torch.equal(other[:nb], parts[0][:nb]):
            raise DistributedError(f"after step {step}, rank {r}'s expert biases differ from rank 0's")
        if not torch.equal(other[nb:], parts[0][nb:]):
            raise DistributedError(f"after step {step}, rank {r}'s parameters differ from rank 0's")
