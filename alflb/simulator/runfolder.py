"""A simulation run folder: every read, write and resume of one, in one class.

Layout::

    config.json                          {"alflb_version": ..., "config": SimulationConfig.as_dict()}
    arrays/reference_seed{s:03d}.npz     SeedReference of seed index s
    arrays/run_{label}_seed{s:03d}.npz   PolicyRun of one policy on seed index s
    metrics.csv, summary.csv             SimulationResult.metrics_rows / summary_rows
    summary.txt                          SimulationResult.format_summary
    summary.png                          alflb.plots.save_summary_figure (optional)

Every file is written atomically (:mod:`alflb.runio`), so a run killed at any point
leaves finished (policy, seed) pairs that :meth:`RunFolder.open` with ``resume=True``
keeps. ``config.json`` is written first and marks the folder as a simulation run folder.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .._tables import csv_text
from ..errors import CorruptFileError, InvalidInputError
from ..runio import (
    atomic_write_json,
    atomic_write_text,
    load_npz,
    prepare_run_folder,
    read_json,
    save_npz_atomic,
)
from .config import SimulationConfig
from .records import REF_ARRAYS, RUN_ARRAYS, PolicyRun, SeedReference

__all__ = ["RunFolder"]

CONFIG = "config.json"


def _version() -> str:
    try:
        return metadata.version("alflb")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


class RunFolder:
    """The files of one simulation run folder (see the module docstring for the layout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---------------------------------------------------------------- opening
    @classmethod
    def create(cls, path: str | Path, config: SimulationConfig, *, overwrite: bool = False) -> RunFolder:
        """A new run folder for ``config`` (refuses a non-empty folder unless ``overwrite``)."""
        folder = cls(prepare_run_folder(path, overwrite=overwrite))
        folder.write_config(config)
        return folder

    @classmethod
    def open(cls, path: str | Path, config: SimulationConfig, *, resume: bool = False,
             overwrite: bool = False) -> RunFolder:
        """Create a run folder, or reopen one to resume: its stored config must equal ``config``.

        A folder that holds files but no ``config.json`` is never resumed (it is not a run
        folder); one that already holds results is refused unless ``resume`` or ``overwrite``.
        """
        folder = cls(prepare_run_folder(path, resume=resume, overwrite=overwrite, marker=CONFIG,
                                        kind="a simulation run folder"))
        if (folder.path / CONFIG).exists() and folder.read_config().as_dict() != config.as_dict():
            raise InvalidInputError(
                f"cannot resume {folder.path}: its config.json differs from this config "
                "(use a new folder or overwrite=True)"
            )
        folder.write_config(config)
        return folder

    # ---------------------------------------------------------------- config
    def write_config(self, config: SimulationConfig) -> None:
        (self.path / "arrays").mkdir(exist_ok=True)
        atomic_write_json(self.path / CONFIG, {"alflb_version": _version(), "config": config.as_dict()})

    def read_config(self) -> SimulationConfig:
        try:
            raw = read_json(self.path / CONFIG)
        except FileNotFoundError:
            raise CorruptFileError(f"{self.path} is not a run folder: config.json is missing") from None
        if not isinstance(raw, dict) or "config" not in raw:
            raise CorruptFileError(f"{self.path / CONFIG} lacks the 'config' entry")
        try:
            return SimulationConfig.from_dict(raw["config"])
        except InvalidInputError as exc:
            raise CorruptFileError(f"{self.path / CONFIG}: {exc}") from exc

    # ---------------------------------------------------------------- arrays
    def run_path(self, label: str, seed_index: int) -> Path:
        return self.path / "arrays" / f"run_{label}_seed{seed_index:03d}.npz"

    def reference_path(self, seed_index: int) -> Path:
        return self.path / "arrays" / f"reference_seed{seed_index:03d}.npz"

    def has_run(self, label: str, seed_index: int) -> bool:
        return self.run_path(label, seed_index).exists()

    def has_reference(self, seed_index: int) -> bool:
        return self.reference_path(seed_index).exists()

    def write_run(self, run: PolicyRun) -> None:
        save_npz_atomic(
            self.run_path(run.label, run.seed_index),
            label=np.asarray(run.label),
            seed_index=np.asarray(run.seed_index),
            time_s=np.asarray(run.time_s),
            scores_sum=np.asarray(run.scores_sum),
            **{name: getattr(run, name) for name in RUN_ARRAYS},
        )

    def read_run(self, label: str, seed_index: int) -> PolicyRun:
        d = load_npz(self.run_path(label, seed_index),
                     required=(*RUN_ARRAYS, "label", "seed_index", "time_s", "scores_sum"))
        return PolicyRun(
            label=str(d["label"]),
            seed_index=int(d["seed_index"]),
            time_s=float(d["time_s"]),
            scores_sum=float(d["scores_sum"]),
            **{name: d[name] for name in RUN_ARRAYS},
        )

    def write_reference(self, ref: SeedReference) -> None:
        save_npz_atomic(self.reference_path(ref.seed_index), seed_index=np.asarray(ref.seed_index),
                        **{n: getattr(ref, n) for n in REF_ARRAYS})

    def read_reference(self, seed_index: int) -> SeedReference:
        d = load_npz(self.reference_path(seed_index), required=(*REF_ARRAYS, "seed_index"))
        return SeedReference(seed_index=int(d["seed_index"]), **{n: d[n] for n in REF_ARRAYS})

    # ---------------------------------------------------------------- tables
    def write_tables(self, result: Any, *, plot: bool = True) -> None:
        """``metrics.csv``, ``summary.csv``, ``summary.txt`` and (``plot``) ``summary.png``.

        ``result`` is a :class:`~alflb.simulator.SimulationResult`; its metric rows are
        computed once and feed every table.
        """
        metrics_rows = result.metrics_rows()
        summary_rows = result.summary_rows(metrics_rows)
        atomic_write_text(self.path / "metrics.csv", csv_text(metrics_rows))
        atomic_write_text(self.path / "summary.csv", csv_text(summary_rows))
        atomic_write_text(self.path / "summary.txt", result.format_summary(summary_rows) + "\n")
        if plot:
            from ..plots import save_summary_figure  # matplotlib only when a figure is written

            save_summary_figure(result, self.path / "summary.png")
