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

**Resume verifies what it resumes.** The run-folder marker (:data:`alflb.runio.MARKER_NAME`)
stores the checksums of the inputs (:meth:`RunFolder.inputs`: the config's SHA-256, the
trace file's SHA-256, the alflb version); a resume whose inputs differ is refused and the
message names what changed. Every run file carries its own identity (label, seed index,
config SHA-256) and is refused when it does not match the name it is read under; the
simulator also compares each resumed run's scores checksum with the stream it recomputes.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .._tables import csv_text
from ..errors import CorruptFileError, InvalidInputError
from ..runio import (
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    json_default,
    load_npz,
    open_run_folder,
    prepare_run_folder,
    read_json,
    read_marker,
    save_npz_atomic,
    update_marker,
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


_INPUT_NAMES = {"config_sha256": "the config", "trace_sha256": "the trace file",
                "alflb_version": "the alflb version"}


def config_sha256(config: SimulationConfig) -> str:
    """The SHA-256 of a config's canonical JSON (sorted keys): the identity of its results."""
    text = json.dumps(config.as_dict(), sort_keys=True, separators=(",", ":"), default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()


class RunFolder:
    """The files of one simulation run folder (see the module docstring for the layout)."""

    def __init__(self, path: str | Path, config_hash: str | None = None) -> None:
        self.path = Path(path)
        self.config_hash = config_hash  # runs are checked against it when set

    # ---------------------------------------------------------------- opening
    @classmethod
    def create(cls, path: str | Path, config: SimulationConfig, *, overwrite: bool = False) -> RunFolder:
        """A new run folder for ``config`` (refuses a non-empty folder unless ``overwrite``)."""
        folder = cls(prepare_run_folder(path, overwrite=overwrite, command="simulate"),
                     config_sha256(config))
        folder.write_config(config)
        return folder

    @classmethod
    def open(cls, path: str | Path, config: SimulationConfig, *, resume: bool = False,
             overwrite: bool = False) -> RunFolder:
        """Create a run folder, or reopen one to resume (without a lock: see :meth:`locked`).

        A folder that holds files but no ``config.json`` is never resumed (it is not a run
        folder); one that already holds results is refused unless ``resume`` or ``overwrite``.
        """
        path = prepare_run_folder(path, resume=resume, overwrite=overwrite, marker=CONFIG,
                                  kind="a simulation run folder", command="simulate")
        return cls.attach(path, config)

    @classmethod
    def locked(cls, path: str | Path, *, resume: bool = False,
               overwrite: bool = False) -> open_run_folder:
        """``with RunFolder.locked(out, resume=...) as path``: the folder, locked for writing."""
        return open_run_folder(path, command="simulate", resume=resume, overwrite=overwrite,
                               marker=CONFIG, kind="a simulation run folder")

    @classmethod
    def attach(cls, path: str | Path, config: SimulationConfig) -> RunFolder:
        """The prepared folder ``path`` for ``config``: verify what it holds, record the inputs.

        Raises :class:`InvalidInputError` if the folder holds a run of another config, or
        one whose inputs (:meth:`inputs`) have changed since; it names what changed.
        """
        folder = cls(path, config_sha256(config))
        inputs = cls.inputs(config)
        if (folder.path / CONFIG).exists():
            if folder.read_config().as_dict() != config.as_dict():
                raise InvalidInputError(
                    f"cannot resume {folder.path}: its config.json differs from this config "
                    "(use a new folder or overwrite=True)"
                )
            stored = (read_marker(folder.path) or {}).get("inputs") or {}
            changed = [f"{_INPUT_NAMES.get(k, k)} ({stored[k]} then, {v} now)"
                       for k, v in inputs.items() if k in stored and stored[k] != v]
            if changed:
                raise InvalidInputError(
                    f"cannot resume {folder.path}: {'; '.join(changed)} changed since its results "
                    "were written: restore the input, or start again with overwrite=True "
                    "(--overwrite) or in a new folder"
                )
        update_marker(folder.path, inputs=inputs)
        folder.write_config(config)
        return folder

    @staticmethod
    def inputs(config: SimulationConfig) -> dict[str, str]:
        """The checksums a resume compares: config, trace file (for a trace stream), version."""
        out = {"config_sha256": config_sha256(config), "alflb_version": _version()}
        if config.stream == "trace":
            out["trace_sha256"] = file_sha256(config.stream_params["path"])
        return out

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

    def _identity(self) -> dict[str, np.ndarray]:
        return {} if self.config_hash is None else {"config_sha256": np.asarray(self.config_hash)}

    def _check_identity(self, path: Path, d: dict[str, np.ndarray], label: str | None,
                        seed_index: int) -> None:
        found = []
        if label is not None and str(d["label"]) != label:
            found.append(f"policy {str(d['label'])!r}, not {label!r}")
        if int(d["seed_index"]) != seed_index:
            found.append(f"seed index {int(d['seed_index'])}, not {seed_index}")
        stored = d.get("config_sha256")
        if self.config_hash is not None and stored is not None and str(stored) != self.config_hash:
            found.append("another config's results")
        if found:
            raise CorruptFileError(
                f"{path} holds {' and '.join(found)}: it was copied or renamed; delete it and "
                "resume to recompute it"
            )

    def write_run(self, run: PolicyRun) -> None:
        save_npz_atomic(
            self.run_path(run.label, run.seed_index),
            **self._identity(),
            label=np.asarray(run.label),
            seed_index=np.asarray(run.seed_index),
            time_s=np.asarray(run.time_s),
            scores_sum=np.asarray(run.scores_sum),
            **{name: getattr(run, name) for name in RUN_ARRAYS},
        )

    def read_run(self, label: str, seed_index: int) -> PolicyRun:
        path = self.run_path(label, seed_index)
        d = load_npz(path, required=(*RUN_ARRAYS, "label", "seed_index", "time_s", "scores_sum"))
        self._check_identity(path, d, label, seed_index)
        return PolicyRun(
            label=str(d["label"]),
            seed_index=int(d["seed_index"]),
            time_s=float(d["time_s"]),
            scores_sum=float(d["scores_sum"]),
            **{name: d[name] for name in RUN_ARRAYS},
        )

    def write_reference(self, ref: SeedReference) -> None:
        save_npz_atomic(self.reference_path(ref.seed_index), **self._identity(),
                        seed_index=np.asarray(ref.seed_index),
                        **{n: getattr(ref, n) for n in REF_ARRAYS})

    def read_reference(self, seed_index: int) -> SeedReference:
        path = self.reference_path(seed_index)
        d = load_npz(path, required=(*REF_ARRAYS, "seed_index"))
        self._check_identity(path, d, None, seed_index)
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
