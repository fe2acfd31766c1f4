"""Byte-level corpora: errors, the deterministic split, resumable sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alflb.errors import InvalidInputError
from alflb.model.data import BatchSampler, default_corpus_path, load_corpus, validation_windows


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ errors


def test_missing_corpus(tmp_path):
    with pytest.raises(InvalidInputError, match=r"corpus path .*nope does not exist"):
        load_corpus(tmp_path / "nope")


def test_empty_file(tmp_path):
    with pytest.raises(InvalidInputError, match=r"corpus file .*empty\.txt is empty"):
        load_corpus(_write(tmp_path, "empty.txt", b""))


def test_binary_file(tmp_path):
    with pytest.raises(InvalidInputError, match="looks binary"):
        load_corpus(_write(tmp_path, "blob.bin", b"abc\x00\x01\x02" * 100))


def test_unreadable_file(tmp_path, monkeypatch):
    path = _write(tmp_path, "secret.txt", b"text " * 100)

    def deny(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", deny)  # root can read anything: simulate the denial
    with pytest.raises(InvalidInputError, match=r"secret\.txt is unreadable: .*Permission denied"):
        load_corpus(path)


def test_folder_without_text(tmp_path):
    _write(tmp_path, "a.bin", b"\x00" * 64)
    _write(tmp_path, "b.txt", b"")
    _write(tmp_path, ".hidden/c.txt", b"hidden text " * 50)
    with pytest.raises(InvalidInputError, match="holds no readable, non-empty text files"):
        load_corpus(tmp_path)


def test_too_short(tmp_path):
    with pytest.raises(InvalidInputError, match="too short"):
        load_corpus(_write(tmp_path, "tiny.txt", b"ab"))
    corpus = load_corpus(_write(tmp_path, "short.txt", b"0123456789" * 3))
    with pytest.raises(InvalidInputError, match="too short for sequences of 64"):
        BatchSampler(corpus.train, batch_size=2, seq_len=64, seed=0)
    with pytest.raises(InvalidInputError, match="too short for one sequence of 64"):
        validation_windows(corpus.val, seq_len=64)


def test_bad_val_fraction(tmp_path):
    with pytest.raises(InvalidInputError, match=r"val_fraction must be in \(0, 1\)"):
        load_corpus(_write(tmp_path, "a.txt", b"x" * 100), val_fraction=1.0)


# ------------------------------------------------------------------ split


def test_folder_split_is_by_path_hash_and_skips_binaries(tmp_path):
    for i in range(40):
        _write(tmp_path, f"d{i % 3}/f{i:02d}.txt", f"file {i};".encode() * 20)
    _write(tmp_path, "z.bin", b"\x00binary")
    a = load_corpus(tmp_path, val_fraction=0.2)
    assert a.n_skipped_files == 1
    assert a.n_train_files + a.n_val_files == 40
    assert 1 <= a.n_val_files < 40
    # adding a file does not move any other file between the splits
    _write(tmp_path, "new.txt", b"a new file;" * 20)
    b = load_corpus(tmp_path, val_fraction=0.2)
    assert b.n_train_files + b.n_val_files == 41
    old_val = set(bytes(a.val).split(b"\n\n"))
    new_val = set(bytes(b.val).split(b"\n\n"))
    assert old_val <= new_val
    assert set(bytes(a.train).split(b"\n\n")) <= set(bytes(b.train).split(b"\n\n"))


def test_single_file_split_is_positional(tmp_path):
    data = bytes(range(32, 127)) * 10
    corpus = load_corpus(_write(tmp_path, "a.txt", data), val_fraction=0.1)
    assert bytes(corpus.train) + bytes(corpus.val) == data
    assert corpus.val.size == round(len(data) * 0.1)


def test_default_corpus_is_the_stdlib():
    corpus = load_corpus()
    assert corpus.source == f"stdlib:{default_corpus_path()}"
    assert corpus.n_train_files > 100 and corpus.n_val_files > 5
    assert corpus.train.dtype == np.uint8 and corpus.train.size > 1_000_000
    assert b"def " in bytes(corpus.val[:200_000])


# ------------------------------------------------------------------ sampling


def test_batches_depend_only_on_seed_and_position():
    data = np.frombuffer(bytes(range(256)) * 20, dtype=np.uint8)
    a = BatchSampler(data, batch_size=4, seq_len=16, seed=7)
    b = BatchSampler(data, batch_size=4, seq_len=16, seed=7)
    for n in (0, 5, 3):  # any order: resuming at position n gives batch n
        xa, ya = a.batch(n)
        xb, yb = b.batch(n)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa[:, 1:], ya[:, :-1])
        assert xa.dtype == torch.int64 and xa.shape == (4, 16)
    assert not torch.equal(a.batch(0)[0], a.batch(1)[0])
    assert not torch.equal(a.batch(0)[0], BatchSampler(data, 4, 16, seed=8).batch(0)[0])


def test_validation_windows_are_contiguous_and_spread():
    data = np.arange(1001, dtype=np.int64).astype(np.uint8)
    w = validation_windows(data, seq_len=10)
    assert w.shape == (100, 11)
    assert torch.equal(w[1], torch.from_numpy(data[10:21].astype(np.int64)))
    few = validation_windows(data, seq_len=10, max_windows=5)
    assert few.shape == (5, 11)
    assert torch.equal(few[0], w[0]) and torch.equal(few[-1], w[-1])
