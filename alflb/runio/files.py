"""Atomic writes, JSON and npz files, memory estimates and loaders that check sizes in untrusted headers before allocating."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, InvalidInputError


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


def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file: ``0o666`` less the umask.

    >>> 0 < file_mode() <= 0o666
    True
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + :func:`os.replace`).

    The parent folder must exist; the file gets the mode a plain ``open()`` would give it
    (the umask is respected, so colleagues on shared storage can read results). Returns
    the path.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InvalidInputError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600 would hide results from the group
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
