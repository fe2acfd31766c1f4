"""Atomic file writes and run folders: the IO every result writer in alflb shares.

A *run folder* holds one experiment's outputs (``config.json``, tables, ``.npz``
arrays, plots). Two rules keep it trustworthy:

1. **Every file is written atomically**: the bytes go to a temporary file in the same
   folder, are flushed and fsynced, then renamed over the target with
   :func:`os.replace`. A reader (or a resumed run after a crash) sees either the old
   file or the complete new one, never a truncated one.
2. **A folder that already holds results is never silently reused**:
   :func:`prepare_run_folder` raises :class:`~alflb.errors.RunFolderExistsError` unless
   the caller asks to ``resume`` (keep what is there, add what is missing) or to
   ``overwrite`` (delete the old contents first).

Arrays are stored with :func:`save_npz_atomic` and read back with :func:`load_npz`,
which never unpickles (``allow_pickle=False``) and turns any unreadable file into
:class:`~alflb.errors.CorruptFileError`.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> run = prepare_run_folder(root / "run")
>>> _ = atomic_write_json(run / "config.json", {"seed": 0, "u": 1e-3})
>>> _ = save_npz_atomic(run / "arrays.npz", load_NE=np.ones((2, 4), np.int32))
>>> read_json(run / "config.json")["u"], load_npz(run / "arrays.npz")["load_NE"].shape
(0.001, (2, 4))
>>> prepare_run_folder(root / "run")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
alflb.errors.RunFolderExistsError: run folder ... already holds results; pass resume=True to continue it or overwrite=True to replace it
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptFileError, InvalidInputError, RunFolderExistsError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "is_run_folder",
    "json_default",
    "load_npz",
    "prepare_run_folder",
    "read_json",
    "save_npz_atomic",
]


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + :func:`os.replace`).

    The parent folder must exist. Returns the path.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InvalidInputError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars/arrays, paths, dataclasses, tuples and sets."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _finite_floats(obj: Any) -> Any:
    # JSON has no NaN/inf; write them as null so the file stays standard JSON.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_floats(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as standard JSON atomically (NaN/inf become ``null``; keys keep their order)."""
    plain = json.loads(json.dumps(obj, default=json_default))
    text = json.dumps(_finite_floats(plain), indent=indent, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing file raises ``FileNotFoundError``, a broken one :class:`CorruptFileError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON: {exc}") from exc


def save_npz_atomic(path: str | os.PathLike, *, compress: bool = False, **arrays: Any) -> Path:
    """Save named arrays to an ``.npz`` atomically.

    Object arrays are refused (they would need pickle to load). Strings are fine as
    numpy unicode arrays, e.g. ``np.asarray(json_text)``.
    """
    path = Path(path)
    if not arrays:
        raise InvalidInputError("save_npz_atomic needs at least one array")
    clean = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype == object:
            raise InvalidInputError(f"array {name!r} has dtype object: it cannot be saved without pickle")
        clean[name] = arr
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **clean)
    return atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` into memory, without pickle.

    Raises :class:`CorruptFileError` if the file cannot be read as an ``.npz``, holds an
    object array, or lacks one of the ``required`` names; ``FileNotFoundError`` if absent.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {name: data[name] for name in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError,
            zlib.error) as exc:
        # A damaged zip can fail in any of these layers (bad CRC, unknown compression
        # method or version, corrupt deflate stream): all mean the file is not usable.
        raise CorruptFileError(f"{path} is not a readable .npz file: {type(exc).__name__}: {exc}") from exc
    missing = [name for name in required if name not in out]
    if missing:
        raise CorruptFileError(f"{path} lacks the arrays {missing}; it holds {sorted(out)}")
    return out


def is_run_folder(path: str | os.PathLike, marker: str) -> bool:
    """Whether ``path`` is a run folder of the kind whose first file is ``marker``.

    Every writer of run folders writes one marker file first (``config.json`` for a
    simulation or a training run, ``sweep.json`` for a sweep); a folder is of that kind
    exactly when the marker is there.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = atomic_write_json(root / "config.json", {})
    >>> is_run_folder(root, "config.json"), is_run_folder(root, "sweep.json")
    (True, False)
    """
    return (Path(path) / marker).is_file()


def prepare_run_folder(
    path: str | os.PathLike, resume: bool = False, overwrite: bool = False, *,
    marker: str | None = None, kind: str = "a run folder",
) -> Path:
    """Create (or reopen) a run folder and return its path.

    Parameters
    ----------
    path : path-like
        The folder. Its parents are created as needed.
    resume : bool
        Keep existing contents: the caller skips the work whose results are already there.
    overwrite : bool
        Delete the existing contents first.
    marker, kind : str, optional
        The file that marks a run folder of this kind (:func:`is_run_folder`) and the
        kind's name for messages: a non-empty folder without the marker is never resumed.

    Raises
    ------
    RunFolderExistsError
        The folder exists, is not empty, and neither ``resume`` nor ``overwrite`` is set;
        or ``resume`` is set and the folder holds files but not ``marker``.
    InvalidInputError
        Both ``resume`` and ``overwrite`` are set, or ``path`` is an existing file.
    """
    path = Path(path)
    if (resume and marker is not None and path.is_dir() and any(path.iterdir())
            and not is_run_folder(path, marker)):
        raise RunFolderExistsError(
            f"cannot resume {path}: it holds files but no {marker}, so it is not {kind} "
            "(use a new folder or overwrite=True)"
        )
    if resume and overwrite:
        raise InvalidInputError("resume and overwrite exclude each other: pick one")
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"run folder {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if overwrite:
            shutil.rmtree(path)
        elif not resume:
            raise RunFolderExistsError(
                f"run folder {path} already holds results; pass resume=True to continue it "
                "or overwrite=True to replace it"
            )
    path.mkdir(parents=True, exist_ok=True)
    return path
