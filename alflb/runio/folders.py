"""Run folders: the marker alflb writes in every folder it creates, the checks before an overwrite or a resume, and the advisory lock of a folder's single writer."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError, InvalidInputError, RunFolderExistsError
from .files import atomic_write_json, read_json

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
    from .. import __version__

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
            remedy = ("choose another folder (alflb did not create this one)" if own is None
                      else "use a new folder or overwrite=True")
            raise RunFolderExistsError(
                f"cannot resume {path}: it holds files but no {marker}, so it is not {kind}: {remedy}"
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
