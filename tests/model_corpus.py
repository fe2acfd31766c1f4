"""The real text the model tests train on: the first standard-library modules, concatenated."""

from __future__ import annotations

import sysconfig
from pathlib import Path


def stdlib_corpus(folder: Path, size: int = 200_000) -> Path:
    """Write ``text.py`` (just over ``size`` bytes of Python source) into ``folder``; return its path."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for f in sorted(stdlib.glob("*.py")):
        data = f.read_bytes()
        parts.append(data)
        total += len(data)
        if total > size:
            break
    path = folder / "text.py"
    path.write_bytes(b"\n\n".join(parts))
    return path


def run_biases(run: Path, n_experts: int = 8):
    """A training run's ``biases.csv`` as a ``(steps, L, E)`` array."""
    import csv

    import numpy as np

    with (run / "biases.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    a = np.array([[float(r[f"e{k}"]) for k in range(n_experts)] for r in rows])
    return a.reshape(len({r["step"] for r in rows}), -1, n_experts)


class ThreadSum:
    """An all-reduce (sum) among ``n`` threads standing for data-parallel ranks.

    ``reduce(rank, x)`` returns the sum of every rank's ``x`` once all have called it;
    ``calls[rank]`` records what each rank reduced (to count the reductions).
    """

    def __init__(self, n: int = 2) -> None:
        import threading

        self.n = n
        self.box: list = [None] * n
        self.calls: list[list] = [[] for _ in range(n)]
        self.barrier = threading.Barrier(n)

    def reduce(self, rank: int, x):
        self.calls[rank].append(x)
        self.box[rank] = x.clone()
        self.barrier.wait()
        out = sum(self.box[1:], self.box[0].clone())
        self.barrier.wait()
        return out
