r"""Byte-level language-model data: a corpus, a deterministic split, resumable sampling.

Every byte is a token (vocabulary 256), so any text works without a tokenizer.

Corpus
------
:func:`load_corpus` reads

- by default the Python standard library's own source files
  (``sysconfig.get_paths()["stdlib"]``, every ``*.py`` below it except
  ``site-packages``/``dist-packages``, in sorted path order): about 30 MB of real,
  varied text that every Python installation has;
- or a text file the user names: its last ``val_fraction`` of bytes is the validation
  set;
- or a folder the user names: every regular file below it (sorted, hidden ones
  skipped), binary files (a NUL byte in the first 8 KiB) skipped.

Files of a folder go to validation by a hash of their relative path:
``(first 8 bytes of sha256(path)) / 2**64 < val_fraction`` (at least one file each way), so the split
does not depend on the file order or on other files. Files are joined with a blank line.

Errors (:class:`~alflb.errors.InvalidInputError`, message pinned in the tests): a
missing path, an unreadable file, a binary file, an empty corpus, a corpus too short
for one training sequence.

Sampling
--------
:class:`BatchSampler` draws batch ``n`` from ``np.random.default_rng([seed, n])``: the
batch depends only on ``(seed, n)``, so a run resumes from the batch position alone.
Validation windows are fixed, contiguous and non-overlapping.

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "a.txt").write_text("hello world " * 100)
>>> corpus = load_corpus(d / "a.txt", val_fraction=0.1)
>>> len(corpus.train), len(corpus.val)
(1080, 120)
>>> sampler = BatchSampler(corpus.train, batch_size=2, seq_len=8, seed=0)
>>> x, y = sampler.batch(0)
>>> tuple(x.shape), bool((x[:, 1:] == y[:, :-1]).all())
((2, 8), True)
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInputError

__all__ = ["BatchSampler", "Corpus", "default_corpus_path", "load_corpus", "validation_windows"]

_SEPARATOR = b"\n\n"
_SNIFF = 8192


def default_corpus_path() -> Path:
    """The standard library's source folder, ``sysconfig.get_paths()["stdlib"]``."""
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True)
class Corpus:
    """Training and validation bytes (``uint8`` arrays) and where they came from."""

    train: np.ndarray  # (N_train,) uint8
    val: np.ndarray  # (N_val,) uint8
    source: str  # the path read, or "stdlib:<path>"
    n_train_files: int
    n_val_files: int
    n_skipped_files: int  # binary or unreadable files skipped in a folder

    def describe(self) -> dict[str, object]:
        return {
            "source": self.source,
            "train_bytes": int(self.train.size),
            "val_bytes": int(self.val.size),
            "train_files": self.n_train_files,
            "val_files": self.n_val_files,
            "skipped_files": self.n_skipped_files,
        }


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"corpus file {path} is unreadable: {exc}") from exc


def _is_binary(data: bytes) -> bool:
    return b"\x00" in data[:_SNIFF]


def _path_hash(rel: str) -> float:
    """A number in [0, 1) from the file's relative path (its validation lottery ticket)."""
    digest = hashlib.sha256(rel.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _folder_files(root: Path, default: bool) -> list[Path]:
    if default:
        files = [p for p in root.rglob("*.py") if not ({"site-packages", "dist-packages"} & set(p.parts))]
    else:
        files = [
            p for p in root.rglob("*")
            if not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
    return sorted(p for p in files if p.is_file())


def load_corpus(path: str | os.PathLike | None = None, val_fraction: float = 0.05) -> Corpus:
    """Read a byte corpus and split it into training and validation (see the module docstring).

    Parameters
    ----------
    path : path-like, optional
        A text file or a folder; default: the standard library's ``*.py`` files.
    val_fraction : float
        Share of files (folder) or of bytes (single file) held out, in ``(0, 1)``.
    """
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
            or not 0 < val_fraction < 1):
        raise InvalidInputError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    default = path is None
    root = default_corpus_path() if default else Path(path)
    source = f"stdlib:{root}" if default else str(root)
    if not root.exists():
        raise InvalidInputError(f"corpus path {root} does not exist")
    if root.is_file():
        data = _read(root)
        if not data:
            raise InvalidInputError(f"corpus file {root} is empty")
        if _is_binary(data):
            raise InvalidInputError(f"corpus file {root} looks binary (it holds NUL bytes), not text")
        arr = np.frombuffer(data, dtype=np.uint8)
        n_val = max(1, round(arr.size * val_fraction))
        if arr.size - n_val < 2:
            raise InvalidInputError(f"corpus file {root} is too short ({arr.size} bytes) to split")
        return Corpus(arr[:-n_val].copy(), arr[-n_val:].copy(), source, 1, 1, 0)
    if not root.is_dir():
        raise InvalidInputError(f"corpus path {root} is neither a file nor a folder")
    train_parts: list[bytes] = []
    val_parts: list[bytes] = []
    skipped = 0
    texts: list[tuple[float, bytes]] = []
    for f in _folder_files(root, default):
        try:
            data = f.read_bytes()
        except OSError:
            skipped += 1
            continue
        if not data or _is_binary(data):
            skipped += bool(data)
            continue
        texts.append((_path_hash(f.relative_to(root).as_posix()), data))
    if not texts:
        raise InvalidInputError(f"corpus folder {root} holds no readable, non-empty text files")
    if len(texts) == 1:
        only = np.frombuffer(texts[0][1], dtype=np.uint8)
        n_val = max(1, round(only.size * val_fraction))
        if only.size - n_val < 2:
            raise InvalidInputError(f"corpus folder {root} holds too little text ({only.size} bytes)")
        return Corpus(only[:-n_val].copy(), only[-n_val:].copy(), source, 1, 1, skipped)
    is_val = [h < val_fraction for h, _ in texts]
    if not any(is_val):  # at least one file each way: the smallest hash goes to validation
        is_val[min(range(len(texts)), key=lambda i: texts[i][0])] = True
    if all(is_val):
        is_val[max(range(len(texts)), key=lambda i: texts[i][0])] = False
    for (_, data), v in zip(texts, is_val):
        (val_parts if v else train_parts).append(data)
    train = np.frombuffer(_SEPARATOR.join(train_parts), dtype=np.uint8).copy()
    val = np.frombuffer(_SEPARATOR.join(val_parts), dtype=np.uint8).copy()
    return Corpus(train, val, source, len(train_parts), len(val_parts), skipped)


class BatchSampler:
    """Random windows of ``seq_len + 1`` bytes; batch ``n`` depends only on ``(seed, n)``.

    ``batch(n)`` returns inputs and next-byte targets, each ``(batch_size, seq_len)`` int64.
    """

    def __init__(self, data: np.ndarray, batch_size: int, seq_len: int, seed: int) -> None:
        if data.size < seq_len + 2:
            raise InvalidInputError(
                f"the training text has {data.size} bytes: too short for sequences of {seq_len} (+1) bytes"
            )
        self.data = torch.from_numpy(np.array(data, dtype=np.uint8, copy=True))
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed

    def starts(self, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, n])
        return rng.integers(0, self.data.numel() - self.seq_len - 1, size=self.batch_size)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.starts(n))[:, None] + torch.arange(self.seq_len + 1)  # (B, T+1)
        window = self.data[idx].to(torch.int64)  # (B, T+1)
        return window[:, :-1], window[:, 1:]


def validation_windows(data: np.ndarray, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len + 1`` bytes, ``(W, seq_len + 1)`` int64.

    With ``max_windows``, that many windows evenly spread over the validation text.
    """
    n = (data.size - 1) // seq_len
    if n < 1:
        raise InvalidInputError(
            f"the validation text has {data.size} bytes: too short for one sequence of {seq_len} (+1) bytes"
        )
    starts = np.arange(n) * seq_len
    if max_windows is not None and n > max_windows:
        starts = starts[np.linspace(0, n - 1, max_windows).round().astype(np.int64)]
    t = torch.from_numpy(np.array(data, dtype=np.uint8, copy=True))
    idx = torch.from_numpy(starts)[:, None] + torch.arange(seq_len + 1)
    return t[idx].to(torch.int64)
