"""The logs of a training run folder: ``metrics.csv``, ``loads.csv``, ``biases.csv``, the trace.

Shape legend: ``N`` traced steps, ``L`` MoE layers, ``T`` tokens, ``E`` experts.

Every CSV is written by :mod:`alflb._tables` (one float format, ``None`` as an empty
cell), one row per optimiser step (per step and MoE layer for the loads and biases), and
appended to as the run goes; rank 0 alone writes. On resume each log is truncated to the
rows of the resumed step, so the continued run's logs equal an uninterrupted run's; a
row torn by a crash (too few cells, a cell that is no number) ends what is kept.
With ``--tensorboard`` the metrics also go to ``tensorboard/`` (:meth:`RunLogs.open_tensorboard`).

``traces/trace.npz`` holds the router scores of the traced steps in
:mod:`alflb.traces`'s format, recorded with :class:`alflb.traces.TraceRecorder`:
``scores_NLTE`` (the unbiased scores of each traced step's global batch, float32),
``loads_NLE`` (the loads the model routed with its bias) and ``metadata`` with ``k``,
``score_func``, ``steps`` (the 1-based optimiser steps traced), ``bias_NLE`` (the fp32
biases used for routing those steps; the router adds the bias, an overloaded expert's
bias goes down), ``moe_blocks``, ``semantics`` (the model's
:class:`~alflb.model.config.ModelConfig` ``semantics``) and ``routing`` (``k``,
``score_func``, ``n_groups``, ``topk_groups``, ``route_scale``: how the model selected
experts); ``alflb simulate --trace FILE`` replays it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._tables import csv_text, format_cell
from ..errors import CorruptFileError
from ..runio import atomic_write_text
from ..traces import TraceRecorder, load_trace

__all__ = ["CsvLog", "RunLogs", "RunTrace", "metrics_header", "read_metrics"]


# Expert-parallel columns of a run given a layout (TrainConfig.ep), after the fixed ones.
EP_COLUMNS = ("ep_overload_factor", "ep_time_lost_pct", "ep_step_time_s")


def metrics_header(blocks: Sequence[int], *, ep: bool = False) -> list[str]:
    """The columns of ``metrics.csv`` for MoE layers at block indices ``blocks`` (``ep``: with :data:`EP_COLUMNS`)."""
    return (["step", "lr", "loss", "lm_loss", "balance_loss", "grad_norm", "maxvio_batch"]
            + [f"maxvio_batch_layer{b}" for b in blocks] + ["maxvio_computation_batch"]
            + ["tokens_per_s", "elapsed_s", "val_loss", "val_ppl", "val_bpb", "maxvio_global"]
            + [f"maxvio_global_layer{b}" for b in blocks] + (list(EP_COLUMNS) if ep else []))


def read_metrics(run_dir: str | Path) -> list[dict[str, float | None]]:
    """``metrics.csv`` as a list of dicts of floats (``None`` for empty cells)."""
    with (Path(run_dir) / "metrics.csv").open(newline="") as fh:
        return [{k: (float(v) if v != "" else None) for k, v in row.items()} for row in csv.DictReader(fh)]


def _complete_rows(reader, header: list[str], resume_step: int) -> list[dict[str, str]]:
    """The rows up to step ``resume_step``, stopping at the first incomplete one (a crash's torn line)."""
    rows = []
    for r in reader:
        if len(r) != len(header):
            break
        try:
            step = int(r[0])
            for cell in r[1:]:
                if cell != "":
                    float(cell)
        except ValueError:
            break
        if step > resume_step:
            break
        rows.append(dict(zip(header, r)))
    return rows


class CsvLog:
    """Append-only CSV with a fixed header; on resume, truncated to the rows of steps ``<= resume_step``.

    A log opened with ``write=False`` (the ranks other than 0) writes nothing.
    """

    def __init__(self, path: Path, header: list[str], resume_step: int | None, *, write: bool = True) -> None:
        self.path, self.header, self.fh = path, header, None
        if not write:
            return
        rows: list[dict[str, str]] = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as fh:
                reader = csv.reader(fh)
                if next(reader, None) == header:
                    rows = _complete_rows(reader, header, resume_step)
        atomic_write_text(path, csv_text(rows, header))
        self.fh = path.open("a", newline="")
        self._writer = csv.writer(self.fh, lineterminator="\n")

    def write(self, row: Mapping[str, Any] | Sequence[Any]) -> None:
        """One row: a mapping by column name (missing columns empty) or the cells in order."""
        if self.fh is None:
            return
        cells = [row.get(h) for h in self.header] if isinstance(row, Mapping) else row
        self._writer.writerow([format_cell(v) for v in cells])

    def flush(self) -> None:
        if self.fh is not None:
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


class RunLogs:
    """The three CSV logs of a run: ``metrics.csv``, ``loads.csv`` and ``biases.csv``."""

    def __init__(self, run_dir: Path, blocks: Sequence[int], n_experts: int, resume_step: int | None,
                 *, write: bool = True, ep: bool = False) -> None:
        self.blocks = list(blocks)
        per_layer = ["step", "layer", *(f"e{k}" for k in range(n_experts))]
        self.writer: Any = None  # the TensorBoard SummaryWriter, when asked for
        self.metrics = CsvLog(run_dir / "metrics.csv", metrics_header(blocks, ep=ep), resume_step, write=write)
        self.loads = CsvLog(run_dir / "loads.csv", per_layer, resume_step, write=write)
        self.biases = CsvLog(run_dir / "biases.csv", per_layer, resume_step, write=write)

    def write_layers(self, step: int, loads_LE: np.ndarray, biases_LE: np.ndarray) -> None:
        """The step's global-batch loads and the biases after its update, one row per MoE layer."""
        for b, load_E, bias_E in zip(self.blocks, loads_LE, biases_LE):
            self.loads.write([step, b, *load_E.tolist()])
            self.biases.write([step, b, *[float(v) for v in bias_E]])

    def open_tensorboard(self, folder: Path, start: int) -> None:
        """Also log every metric with ``torch.utils.tensorboard`` (events after step ``start`` are replaced).

        Without the tensorboard package, says so in one line and logs the CSVs only.
        """
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            import sys

            print("note: --tensorboard needs the tensorboard package (pip install tensorboard); "
                  "logging to the CSV files only", file=sys.stderr)
            return
        self.writer = SummaryWriter(str(folder), purge_step=start + 1 if start else None)

    def scalars(self, step: int, row: Mapping[str, Any]) -> None:
        """The step's metrics to TensorBoard (when open); empty cells are skipped."""
        if self.writer is None:
            return
        for name, value in row.items():
            if name != "step" and value is not None:
                self.writer.add_scalar(name, float(value), step)

    def close_tensorboard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def flush(self) -> None:
        for log in (self.metrics, self.loads, self.biases):
            log.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        for log in (self.metrics, self.loads, self.biases):
            log.close()


class RunTrace:
    """The router scores of the traced steps; :meth:`flush` rewrites ``traces/trace.npz`` atomically.

    It is flushed at every checkpoint and at the end; a resumed run reloads the steps up
    to its checkpoint (``resume_step``) and records the rest again. Disabled (nothing is
    recorded or written) on ranks other than 0 and when no step is traced.
    """

    def __init__(self, run_dir: Path, *, top_k: int, score_func: str, blocks: Sequence[int],
                 resume_step: int, enabled: bool, semantics: str | None = None,
                 routing: dict[str, Any] | None = None) -> None:
        self.path = run_dir / "traces" / "trace.npz"
        self.top_k, self.score_func, self.blocks = top_k, score_func, list(blocks)
        # whose definitions the model follows, and how it routes: what a replay must reproduce
        self.semantics, self.routing = semantics, dict(routing or {})
        self.enabled = enabled
        self.recorder = TraceRecorder(None)
        if not enabled:
            return
        self.path.parent.mkdir(exist_ok=True)
        if self.path.exists():
            trace = load_trace(self.path)
            missing = [k for k in ("steps", "bias_NLE") if k not in trace.metadata]
            if missing:
                raise CorruptFileError(
                    f"{self.path} lacks the metadata {missing} that a resumed run continues from: "
                    "move the trace away to record it anew from the checkpoint on, or use a new folder"
                )
            try:
                self.recorder.add_trace(trace, labels=trace.metadata["steps"],
                                        bias_NLE=np.asarray(trace.metadata["bias_NLE"], dtype=np.float32))
            except (ValueError, TypeError, IndexError) as exc:
                raise CorruptFileError(f"{self.path}: its metadata does not fit its scores: {exc}") from exc
            self.recorder.keep_until(resume_step)

    def add(self, step: int, scores_LTE: np.ndarray, bias_LE: np.ndarray, load_LE: np.ndarray) -> None:
        """Step ``step``'s scores ``(L, T, E)``, the biases it routed with and its loads ``(L, E)``."""
        if self.enabled:
            self.recorder.add_step(scores_LTE, load_LE=load_LE, bias_LE=bias_LE, label=step)

    def flush(self) -> None:
        if not (self.enabled and self.recorder.labels):
            return
        rec = self.recorder
        metadata = {  # the key order of the files written so far (the metadata is one JSON string)
            "source": "alflb.model", "score_func": self.score_func, "moe_blocks": self.blocks,
            "k": int(self.top_k), "steps": [int(s) for s in rec.labels],
            "bias_NLE": rec.bias_NLE.astype(np.float64).tolist(), "activation": self.score_func,
        }
        if self.semantics is not None:
            metadata["semantics"] = self.semantics
        if self.routing:
            metadata["routing"] = self.routing
        rec.to_trace(metadata).save(self.path)
