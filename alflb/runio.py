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
import hashlib
import io
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptFileError, InvalidInputError, RunFolderExistsError

__all__ = [
    "LOCK_NAME",
    "MARKER_NAME",
    "RunLock",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "available_memory",
    "check_memory",
    "file_sha256",
    "install_parent_death_signal",
    "is_run_folder",
    "json_default",
    "load_npy_checked",
    "load_npz",
    "load_npz_checked",
    "open_run_folder",
    "prepare_run_folder",
    "read_json",
    "read_marker",
    "record_worker_pid",
    "save_npz_atomic",
    "update_marker",
    "worker_pids",
]

#: The file alflb writes first into every run folder it creates: which command made the
#: folder, with which alflb version, and the checksums of its inputs. ``overwrite`` deletes
#: only a folder that carries it.
MARKER_NAME = ".alflb-run.json"
#: The advisory lock of a run folder while a process writes it (:class:`RunLock`).
LOCK_NAME = ".alflb.lock"
#: The pids of the worker processes that wrote into a run folder (one per line).
PIDS_NAME = ".alflb-workers.pids"
_MARKER_FORMAT = "alflb-run-folder"
_OWN_FILES = (MARKER_NAME, LOCK_NAME, PIDS_NAME)


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


# --------------------------------------------------------------------------- memory
def available_memory() -> int | None:
    """Bytes of memory this process can still use (``MemAvailable``), or None if unknown.

    Reads ``/proc/meminfo`` where there is one, else ``os.sysconf``'s free pages.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**27 else f"{n / 2**20:.3g} MiB"


def check_memory(n_bytes: float, what: str, remedy: str = "use smaller sizes") -> None:
    """Refuse, with one line, work whose estimated memory ``n_bytes`` exceeds what is available.

    ``what`` names the work and its sizes (``"a simulation of N=... T=... E=..."``).
    """
    avail = available_memory()
    if avail is not None and n_bytes > avail:
        raise InvalidInputError(
            f"{what} needs about {_gib(n_bytes)} of memory, more than the {_gib(avail)} available: "
            f"{remedy}"
        )


# --------------------------------------------------------------------------- checked loading
_CORRUPT_REMEDY = "re-create the file or pass another one"


def _npy_header(fh: Any, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, bytes of data)`` from the header of a ``.npy`` stream, or CorruptFileError."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = npformat.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, _fortran, dtype = npformat.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unknown .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise CorruptFileError(f"{where} has no valid .npy header ({exc}): {_CORRUPT_REMEDY}") from None
    if dtype.hasobject:
        raise CorruptFileError(f"{where} holds an object array, which alflb never unpickles: "
                               f"{_CORRUPT_REMEDY}")
    n_items = 1
    for dim in shape:
        n_items *= int(dim)
    return tuple(int(d) for d in shape), dtype, n_items * dtype.itemsize


def _check_claim(where: str, shape: tuple[int, ...], claimed: int, room: int,
                 max_bytes: int | None) -> None:
    if claimed > room:
        raise CorruptFileError(
            f"{where}: its header claims an array of shape {shape} ({_gib(claimed)}), more than "
            f"the file holds ({_gib(room)}): the file is truncated or forged; {_CORRUPT_REMEDY}"
        )
    if max_bytes is not None and claimed > max_bytes:
        raise InvalidInputError(
            f"{where}: the array of shape {shape} ({_gib(claimed)}) exceeds the limit of "
            f"{_gib(max_bytes)}"
        )


def load_npy_checked(path: str | os.PathLike, max_bytes: int | None = None,
                     mmap: bool = False) -> np.ndarray:
    """Load a ``.npy`` file after checking the size its header claims, never unpickling.

    The header's shape and dtype are read first (:mod:`numpy.lib.format`); a claim larger
    than the file could hold raises :class:`CorruptFileError`, one larger than
    ``max_bytes`` or (unless ``mmap``) than the available memory raises
    :class:`InvalidInputError`; nothing is allocated before these checks.
    ``mmap=True`` maps the file read-only instead of reading it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not path.is_file():
        raise InvalidInputError(f"{path} is not a regular file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        shape, _dtype, claimed = _npy_header(fh, str(path))
        offset = fh.tell()
    _check_claim(str(path), shape, claimed, size - offset, max_bytes)
    if not mmap:
        check_memory(claimed, f"loading {path} (shape {shape})", "use a machine with more memory")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptFileError(f"{path} is not a readable .npy file: {type(exc).__name__}: {exc}; "
                               f"{_CORRUPT_REMEDY}") from exc


def _check_npz_members(path: Path, max_bytes: int | None) -> None:
    # Read every member's .npy header and compare its claim with the member's size and the
    # memory: a forged header must not make np.load allocate terabytes.
    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            where = f"{path} (member {info.filename})"
            with zf.open(info) as fh:
                shape, _dtype, claimed = _npy_header(fh, where)
                header = fh.tell()
            _check_claim(where, shape, claimed, info.file_size - header, max_bytes)
            total += claimed
    if max_bytes is not None and total > max_bytes:
        raise InvalidInputError(f"{path}: its arrays ({_gib(total)}) exceed the limit of {_gib(max_bytes)}")
    check_memory(total, f"loading {path}", "use a machine with more memory")


def load_npz_checked(path: str | os.PathLike, required: Iterable[str] = (),
                     max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` into memory, without pickle, after checking sizes.

    Each member's ``.npy`` header is read before anything is allocated: a shape larger
    than the member holds (by the zip directory) is :class:`CorruptFileError`, arrays
    larger than ``max_bytes`` or than the available memory :class:`InvalidInputError`.
    An unreadable file, an object array or a missing ``required`` name is
    :class:`CorruptFileError`; an absent file ``FileNotFoundError``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not path.is_file():
        raise InvalidInputError(f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path} is empty, not an .npz file: {_CORRUPT_REMEDY}")
    try:
        _check_npz_members(path, max_bytes)
        with np.load(path, allow_pickle=False) as data:
            out = {name: data[name] for name in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError,
            zlib.error, RuntimeError) as exc:
        if isinstance(exc, (CorruptFileError, InvalidInputError)):
            raise
        # A damaged zip can fail in any of these layers (bad CRC, unknown compression
        # method or version, corrupt deflate stream): all mean the file is not usable.
        raise CorruptFileError(f"{path} is not a readable .npz file: {type(exc).__name__}: {exc}; "
                               f"{_CORRUPT_REMEDY}") from exc
    missing = [name for name in required if name not in out]
    if missing:
        raise CorruptFileError(f"{path} lacks the arrays {missing}; it holds {sorted(out)}")
    return out


def load_npz(path: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` into memory, without pickle (:func:`load_npz_checked`).

    Raises :class:`CorruptFileError` if the file cannot be read as an ``.npz``, holds an
    object array, claims more bytes than it holds, or lacks one of the ``required`` names;
    ``FileNotFoundError`` if absent.
    """
    return load_npz_checked(path, required)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- run folders
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


def _version() -> str:
    from . import __version__

    return str(__version__)


def read_marker(path: str | os.PathLike) -> dict[str, Any] | None:
    """The run-folder marker of ``path`` (:data:`MARKER_NAME`), or None if it has none.

    A marker that is not alflb's raises :class:`CorruptFileError`.
    """
    file = Path(path) / MARKER_NAME
    if not file.is_file():
        return None
    raw = read_json(file)
    if not isinstance(raw, dict) or raw.get("format") != _MARKER_FORMAT:
        raise CorruptFileError(f"{file} is not an alflb run-folder marker: remove it by hand if "
                               "the folder is yours")
    return raw


def _write_marker(path: Path, command: str) -> None:
    atomic_write_json(path / MARKER_NAME, {
        "format": _MARKER_FORMAT, "version": 1, "command": command, "alflb_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "inputs": {},
    })


def update_marker(path: str | os.PathLike, **entries: Any) -> dict[str, Any]:
    """Add ``entries`` (e.g. ``inputs={...}``) to the marker of run folder ``path``; returns it."""
    marker = read_marker(path)
    if marker is None:
        raise CorruptFileError(f"{path} has no {MARKER_NAME}: it was not created by alflb")
    marker.update(entries)
    atomic_write_json(Path(path) / MARKER_NAME, marker)
    return marker


def _holds_results(path: Path) -> bool:
    return path.is_dir() and any(p.name not in _OWN_FILES for p in path.iterdir())


def _forbidden_to_delete(path: Path) -> str | None:
    # Folders that overwrite never empties, whatever marker they carry.
    real = path.resolve()
    cwd = Path.cwd().resolve()
    if real == Path(real.anchor):
        return "a filesystem root"
    if real == cwd or real in cwd.parents:
        return "the current directory or one of its parents"
    home = Path.home().resolve()
    if real == home or real in home.parents:
        return "the home directory or one of its parents"
    return None


def _check_out_path(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise InvalidInputError(
            f"run folder {path} is a dangling symbolic link (to {os.readlink(path)}): remove it "
            "or point it at a folder"
        )
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"run folder {path} exists and is not a folder: choose another path")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise InvalidInputError(f"cannot create run folder {path}: {parent} is a file, not a folder")
        if parent.exists():
            break


def _check_folder(path: Path, resume: bool, overwrite: bool, marker: str | None, kind: str,
                  command: str | None) -> str:
    """Which action opening ``path`` means (``create``, ``resume``, ``overwrite``), or raise."""
    if resume and overwrite:
        raise InvalidInputError("resume and overwrite exclude each other: pick one")
    _check_out_path(path)
    if not _holds_results(path):
        return "create"
    own = read_marker(path)
    if own is not None and command is not None and own.get("command") not in (None, command):
        raise RunFolderExistsError(
            f"run folder {path} was made by 'alflb {own.get('command')}', not 'alflb {command}': "
            "choose another folder"
        )
    if resume:
        if marker is not None and not is_run_folder(path, marker):
            raise RunFolderExistsError(
                f"cannot resume {path}: it holds files but no {marker}, so it is not {kind} "
                "(use a new folder or overwrite=True)"
            )
        return "resume"
    if overwrite:
        if own is None:
            raise RunFolderExistsError(
                f"refusing to overwrite {path}: it holds files but no {MARKER_NAME}, so alflb did "
                "not create it; delete it yourself if you mean to, or choose another folder"
            )
        if path.is_symlink():
            raise RunFolderExistsError(
                f"refusing to overwrite {path}: it is a symbolic link (to {os.readlink(path)}); "
                "pass the folder itself"
            )
        why = _forbidden_to_delete(path)
        if why is not None:
            raise RunFolderExistsError(f"refusing to overwrite {path}: it is {why}")
        return "overwrite"
    raise RunFolderExistsError(
        f"run folder {path} already holds results; pass resume=True to continue it "
        "or overwrite=True to replace it"
    )


def _empty_folder(path: Path) -> None:
    # Delete the folder's contents but keep the folder (and the lock its writer holds).
    for child in path.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def prepare_run_folder(
    path: str | os.PathLike, resume: bool = False, overwrite: bool = False, *,
    marker: str | None = None, kind: str = "a run folder", command: str | None = None,
) -> Path:
    """Create (or reopen) a run folder and return its path.

    Parameters
    ----------
    path : path-like
        The folder. Its parents are created as needed. A new folder gets the marker
        :data:`MARKER_NAME` (which ``command`` made it, the alflb version).
    resume : bool
        Keep existing contents: the caller skips the work whose results are already there.
    overwrite : bool
        Delete the existing contents first: only of a folder that carries
        :data:`MARKER_NAME`, never of a symbolic link, the current directory, the home
        directory, a filesystem root, or one of their parents.
    marker, kind : str, optional
        The file that marks a run folder of this kind (:func:`is_run_folder`) and the
        kind's name for messages: a non-empty folder without the marker is never resumed.
    command : str, optional
        The command that writes the folder (``"simulate"``, ``"sweep"``, ``"train"``):
        recorded in the marker; a folder made by another command is refused.

    Raises
    ------
    RunFolderExistsError
        The folder exists, is not empty, and neither ``resume`` nor ``overwrite`` is set;
        ``resume`` is set and the folder holds files but not ``marker``; ``overwrite`` is
        set and the folder lacks :data:`MARKER_NAME` or is a protected folder.
    InvalidInputError
        Both ``resume`` and ``overwrite`` are set, ``path`` is an existing file or a
        dangling symbolic link.
    """
    path = Path(path)
    action = _check_folder(path, resume, overwrite, marker, kind, command)
    if action == "overwrite":
        _empty_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    if read_marker(path) is None or action == "overwrite":
        _write_marker(path, command or "run")
    return path


# --------------------------------------------------------------------------- the lock
def _proc_start(pid: int) -> str | None:
    # The start time of a process (Linux), to tell a live owner from a reused pid.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class RunLock:
    """An advisory lock on a run folder: one writer at a time.

    The lock is the file :data:`LOCK_NAME` in the folder, created exclusively
    (``O_CREAT | O_EXCL``) and holding the owner's pid, host, process start time, command
    and creation time. A second writer raises :class:`RunFolderExistsError` naming the
    owner. A lock whose owner is dead (same host, pid gone or reused) is stale and is
    taken over. The lock is released on exit of the ``with`` block, also on an exception;
    the ``alflb`` command turns SIGTERM into an exception, so it is released then too.
    A SIGKILLed owner leaves the file behind, and the next writer finds it stale.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with RunLock(folder, command="simulate"):
    ...     (folder / LOCK_NAME).exists()
    True
    >>> (folder / LOCK_NAME).exists()
    False
    """

    def __init__(self, folder: str | os.PathLike, *, command: str = "alflb") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self._held = False

    def _owner_text(self, owner: dict[str, Any]) -> str:
        return (f"pid {owner.get('pid')} on {owner.get('host')} ('alflb {owner.get('command')}', "
                f"since {owner.get('created')})")

    def _read_owner(self) -> dict[str, Any] | None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def _is_stale(self, owner: dict[str, Any]) -> bool:
        if owner.get("host") != socket.gethostname():
            return False  # another machine's process: cannot tell, so never steal
        pid = owner.get("pid")
        if not isinstance(pid, int) or not _pid_alive(pid):
            return True
        start = owner.get("start")
        return start is not None and _proc_start(pid) not in (None, start)

    def acquire(self) -> RunLock:
        if not self.folder.is_dir():
            raise InvalidInputError(f"cannot lock {self.folder}: it is not a folder")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _proc_start(os.getpid()),
              "command": self.command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        data = (json.dumps(me) + "\n").encode()
        for _attempt in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self._read_owner()
                if owner is None:
                    continue  # released meanwhile: try again
                if not owner:
                    # Being written right now, or damaged: give a writer a moment.
                    time.sleep(0.2)
                    owner = self._read_owner()
                    if owner is None:
                        continue
                    if not owner:
                        raise RunFolderExistsError(
                            f"{self.folder} is locked by {self.path}, which is unreadable: if no "
                            "alflb process writes this folder, delete that file") from None
                if self._is_stale(owner):
                    # Take over by renaming our own file over the stale one (atomic).
                    tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
                    tmp.write_bytes(data)
                    if self._read_owner() == owner:
                        os.replace(tmp, self.path)
                        if self._read_owner() == me:
                            self._held = True
                            return self
                    tmp.unlink(missing_ok=True)
                    continue
                raise RunFolderExistsError(
                    f"run folder {self.folder} is being written by {self._owner_text(owner)}: "
                    "wait for it to finish, or stop it, or use another folder"
                ) from None
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            self._held = True
            return self
        raise RunFolderExistsError(f"could not lock {self.folder}: another process keeps taking the lock")

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        owner = self._read_owner()
        if owner and owner.get("pid") == os.getpid():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class open_run_folder:  # a context manager, named and used like a function
    """Lock, check and prepare a run folder for writing: ``with open_run_folder(...) as path``.

    The one entry point for a command that writes a run folder: it refuses what
    :func:`prepare_run_folder` refuses *before* touching the folder (so a foreign folder
    gets no lock file), creates the folder, takes its :class:`RunLock`, checks again
    under the lock, applies ``overwrite`` and writes the marker; the lock is released on
    exit, also on exceptions.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with open_run_folder(root / "run", command="simulate") as run:
    ...     read_marker(run)["command"]
    'simulate'
    """

    def __init__(self, path: str | os.PathLike, *, command: str, resume: bool = False,
                 overwrite: bool = False, marker: str | None = None,
                 kind: str = "a run folder") -> None:
        self.path = Path(path)
        self._args = (resume, overwrite, marker, kind, command)
        self._lock: RunLock | None = None

    def __enter__(self) -> Path:
        resume, overwrite, marker, kind, command = self._args
        _check_folder(self.path, resume, overwrite, marker, kind, command)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = RunLock(self.path, command=command).acquire()
        try:
            return prepare_run_folder(self.path, resume, overwrite, marker=marker, kind=kind,
                                      command=command)
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.release()


# --------------------------------------------------------------------------- worker processes
def record_worker_pid(folder: str | os.PathLike, pid: int | None = None) -> None:
    """Append a worker's pid to the run folder's :data:`PIDS_NAME` (one line, one write)."""
    line = f"{os.getpid() if pid is None else pid}\n".encode()
    fd = os.open(Path(folder) / PIDS_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def worker_pids(folder: str | os.PathLike) -> list[int]:
    """The pids :func:`record_worker_pid` recorded in ``folder`` (empty if none)."""
    try:
        text = (Path(folder) / PIDS_NAME).read_text(encoding="ascii")
    except FileNotFoundError:
        return []
    return [int(t) for t in text.split() if t.isdigit()]


def install_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Make this (child) process die when its parent dies.

    On Linux, ``prctl(PR_SET_PDEATHSIG, sig)``; everywhere, a daemon thread that watches
    :func:`os.getppid` and sends ``sig`` to this process when the parent is gone. Call it
    first thing in a worker process (a pool initializer).
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent or parent == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, name="alflb-parent-watchdog", daemon=True).start()
