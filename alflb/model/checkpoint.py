"""Atomic, verifiable training checkpoints, read back with ``torch.load(weights_only=True)``.

A checkpoint is one ``torch.save`` file ``checkpoints/step_XXXXXXXX.pt`` holding plain
containers and tensors only (no pickled classes):

``format``, ``version``
    ``"alflb.model.checkpoint"``, 1.
``step``, ``data_position``
    Optimiser steps completed, and the next batch's index (equal: batch ``n`` is drawn
    from ``(seed, n)``).
``model``
    The model's ``state_dict``, which includes every router's fp32 ``expert_bias``.
``optimizer``, ``balancer``
    The optimiser's ``state_dict``; the balancing config and the rule states.
``rng``
    The torch CPU (and CUDA) generator states.
``train_config``
    The :class:`~alflb.model.train.TrainConfig` as JSON-able data.
``sha256``
    The digest of every other entry (:func:`payload_digest`: keys, scalars, and each
    tensor's dtype, shape and bytes), so that a checkpoint verifies on its own.

Every file is written atomically (temp file, fsync, rename, via :mod:`alflb.runio`), then
``checkpoints/latest.json`` is rewritten atomically with the file name, the step and the
file's SHA-256. :func:`load_checkpoint` checks both digests and that the step in the file
name is the step inside, and turns a truncated, tampered or foreign file into
:class:`~alflb.errors.CorruptFileError`. :func:`resumable_checkpoint` finds the checkpoint a
resumed run continues from: the one ``latest.json`` names, or, when the pointer is lost,
the newest ``step_*.pt`` that loads and verifies.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CorruptFileError
from ..runio import atomic_write_bytes, atomic_write_json, read_json

__all__ = ["CHECKPOINT_FORMAT", "checkpoint_files", "latest_checkpoint", "load_checkpoint", "payload_digest",
           "resumable_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "alflb.model.checkpoint"
CHECKPOINT_VERSION = 1
_REQUIRED = ("format", "version", "step", "model", "optimizer", "balancer", "rng", "train_config")
_NAME = re.compile(r"step_(\d{8,})\.pt")


def payload_digest(data: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's entries other than ``sha256``: keys, scalars, tensors' dtype, shape, bytes.

    The same on save and after ``torch.load`` (it does not depend on how ``torch.save``
    lays out the file).
    """
    h = hashlib.sha256()

    def walk(obj: Any) -> None:
        if obj is data:
            obj = {k: v for k, v in data.items() if k != "sha256"}
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{list(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(obj, dict):
            h.update(f"D{len(obj)}".encode())
            for k in sorted(obj, key=repr):
                h.update(repr(k).encode())
                walk(obj[k])
        elif isinstance(obj, (list, tuple)):
            h.update(f"L{len(obj)}".encode())
            for v in obj:
                walk(v)
        else:
            h.update(f"S{obj!r}".encode())

    walk(data)
    return h.hexdigest()


def save_checkpoint(folder: str | os.PathLike, payload: dict[str, Any], keep: int = 2) -> Path:
    """Write ``payload`` (which must hold the keys listed above except ``format``/``version``).

    Keeps the newest ``keep`` checkpoint files. Returns the new file's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    data["sha256"] = payload_digest(data)
    buf = io.BytesIO()
    torch.save(data, buf)
    raw = buf.getvalue()
    path = folder / f"step_{int(payload['step']):08d}.pt"
    atomic_write_bytes(path, raw)
    atomic_write_json(
        folder / "latest.json",
        {"file": path.name, "step": int(payload["step"]), "sha256": hashlib.sha256(raw).hexdigest()},
    )
    for old in sorted(folder.glob("step_*.pt"))[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest.json`` names, or None when the folder holds none."""
    pointer = Path(folder) / "latest.json"
    if not pointer.exists():
        return None
    info = read_json(pointer)
    if not isinstance(info, dict) or "file" not in info:
        raise CorruptFileError(f"{pointer} does not name a checkpoint file")
    path = Path(folder) / str(info["file"])
    if not path.exists():
        raise CorruptFileError(f"{pointer} names {path.name}, which does not exist")
    return path


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The ``step_*.pt`` files of ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.fullmatch(p.name)), key=lambda p: int(p.name[5:-3]))


def resumable_checkpoint(folder: str | os.PathLike, map_location: str | torch.device = "cpu",
                         ) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a resumed run continues from, loaded and verified; None when there is none.

    ``latest.json`` names it; when that pointer is missing (lost in a copy, deleted), the
    newest ``step_*.pt`` that loads and verifies is taken. Raises
    :class:`~alflb.errors.CorruptFileError` when the named checkpoint fails its checks, or
    when checkpoint files exist and none of them verifies: resuming must not start over on
    top of checkpoints that something else could still recover.
    """
    folder = Path(folder)
    named = latest_checkpoint(folder)
    if named is not None:
        return named, load_checkpoint(named, map_location=map_location)
    problems = []
    for path in reversed(checkpoint_files(folder)):
        try:
            return path, load_checkpoint(path, map_location=map_location)
        except (CorruptFileError, OSError) as exc:
            problems.append(str(exc))
    if problems:
        raise CorruptFileError(
            f"{folder} has no latest.json and none of its {len(problems)} checkpoint files verifies "
            f"({problems[0]}); refusing to resume over them: move them away or use a new folder"
        )
    return None


def _expected_digest(path: Path) -> str | None:
    pointer = path.parent / "latest.json"
    if not pointer.exists():
        return None
    try:
        info = read_json(pointer)
    except CorruptFileError:
        return None
    if isinstance(info, dict) and info.get("file") == path.name:
        return info.get("sha256")
    return None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (or a checkpoints folder's latest) with ``weights_only=True``.

    Raises ``FileNotFoundError`` when absent and :class:`CorruptFileError` when the file is
    truncated, does not match its recorded SHA-256, is not a torch file, or lacks keys.
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path} (no latest.json)")
        path = found
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    raw = path.read_bytes()
    digest = _expected_digest(path)
    if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
        raise CorruptFileError(f"checkpoint {path} does not match the SHA-256 recorded in latest.json")
    try:
        data = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, unsafe globals, ...
        raise CorruptFileError(f"checkpoint {path} is unreadable: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CorruptFileError(f"{path} is not an alflb model checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CorruptFileError(f"checkpoint {path} has version {data.get('version')!r}, expected {CHECKPOINT_VERSION}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CorruptFileError(f"checkpoint {path} lacks {missing}")
    if "sha256" in data and payload_digest(data) != data["sha256"]:
        raise CorruptFileError(f"checkpoint {path} does not match the SHA-256 of its contents")
    m = _NAME.fullmatch(path.name)
    if m and int(m.group(1)) != data["step"]:
        raise CorruptFileError(f"checkpoint {path} holds step {data['step']!r}, not the step of its name")
    return data
