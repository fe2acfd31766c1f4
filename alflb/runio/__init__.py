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

from .files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    available_memory,
    check_memory,
    file_mode,
    file_sha256,
    json_default,
    load_npy_checked,
    load_npz,
    load_npz_checked,
    read_json,
    save_npz_atomic,
)
from .folders import (
    LOCK_NAME,
    MARKER_NAME,
    RunLock,
    is_run_folder,
    open_run_folder,
    prepare_run_folder,
    read_marker,
    update_marker,
)
from .processes import (
    install_parent_death_signal,
    record_worker_pid,
    worker_pids,
)

__all__ = [
    "LOCK_NAME",
    "MARKER_NAME",
    "RunLock",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "available_memory",
    "check_memory",
    "file_mode",
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
