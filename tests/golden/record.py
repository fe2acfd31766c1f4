"""Golden outputs: seeded ``simulate``, ``sweep``, ``train`` and ``solve`` runs, as digests.

The library's behaviour is pinned by running a fixed set of seeded commands through the
command line (a fresh process each, as a user runs them) and reducing every result file
to a digest of its *numbers*: each array of an ``.npz`` or checkpoint by dtype, shape and
bytes; each CSV by its cells (numbers at six significant digits), leaving out the columns
that measure wall time; each JSON by its content, leaving out paths, timings and versions.
Text reports (``.txt``, ``.md``) are presentation and are left out: their numbers are the
CSVs'. ``tests/test_golden.py``
recomputes the digests and asserts that they are identical, so a refactor that changes a
single bit of a result fails and names the file (and the array or column) that moved.

Record anew only on purpose (a change of behaviour, said in the commit)::

    python tests/golden/record.py            # rewrites tests/golden/digests.json

The digests hold for the machine class and the package versions the suite runs on (the
CPU torch wheel the Makefile installs); a platform with other floating-point kernels may
differ in the last bits, which is what this test is for.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIGESTS = HERE / "digests.json"

# Columns and keys that measure the machine, not the method.
VOLATILE_COLUMNS = {"tokens_per_s", "elapsed_s", "seconds", "wall_s", "time_s", "solve_time_s"}
VOLATILE_KEYS = {"source", "torch", "alflb_version", "config_sha256", "wall_time", "time", "seconds", "elapsed_s",
                 "solve_time_s", "time_s", "first_call_s", "compile_s", "path", "run_dir", "out", "scheduler", "created",
                 "host", "pid", "sha256", "numpy", "python", "corpus", "executor", "workers", "warm_s"}

CORPUS_TEXT = "".join(
    f"def f{i}(x):\n    return x * {i % 7} + {i % 5}  # line {i} of a small corpus\n"
    for i in range(900)
)

SIM_RULES = ("none,sign,centred,decay,uniform,multiplicative,quantile,momentum,frozen_tail,"
             "batch_optimum,sinkhorn,expert_choice")

# name -> (argv after `alflb`, output folder or None for stdout-only commands)
SCENARIOS: dict[str, list[str]] = {
    "simulate_skewed": ["simulate", "--stream", "skewed", "--rules", SIM_RULES, "--steps", "40",
                        "--tokens", "128", "--experts", "8", "--k", "2", "--seeds", "2",
                        "--pseudo-batches", "20", "--no-plot", "--quiet", "--out", "{out}"],
    "simulate_drifting": ["simulate", "--stream", "drifting", "--rules",
                          "sign:u=0.01,decay:a=0.5,quantile", "--steps", "30", "--tokens", "64",
                          "--experts", "6", "--k", "3", "--seeds", "1", "--seed", "5",
                          "--no-plot", "--quiet", "--out", "{out}"],
    "sweep_serial": ["sweep", "--grid", "u=0.001,0.01", "--rules", "sign,decay", "--steps", "20",
                     "--tokens", "64", "--experts", "8", "--k", "2", "--seeds", "2",
                     "--executor", "serial", "--quiet", "--out", "{out}"],
    "train_sign": ["train", "--steps", "6", "--eval-every", "3", "--checkpoint-every", "3",
                   "--trace-steps", "1,4", "--seed", "1", "--no-progress", "--corpus", "{corpus}",
                   "--device", "cpu", "--u", "0.01", "--out", "{out}"],
    "train_aux_accum": ["train", "--steps", "4", "--eval-every", "2", "--checkpoint-every", "2",
                        "--balance", "aux", "--grad-accum", "2", "--batch-size", "4", "--seed",
                        "2", "--no-progress", "--corpus", "{corpus}", "--device", "cpu",
                        "--out", "{out}"],
    "solve_fast_skewed": ["solve", "--tokens", "2048", "--experts", "16", "--k", "4",
                          "--distribution", "skewed", "--json"],
    "solve_fast_ties_cf": ["solve", "--tokens", "1000", "--experts", "12", "--k", "3",
                           "--distribution", "ties", "--capacity-factor", "1.25", "--json"],
    "solve_highs_mm": ["solve", "--tokens", "512", "--experts", "8", "--k", "2", "--method",
                       "highs", "--bias", "max_margin", "--json"],
    "solve_flow": ["solve", "--tokens", "512", "--experts", "8", "--k", "2", "--method", "flow",
                   "--distribution", "sigmoid", "--json"],
}


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _array_digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return f"{a.dtype.str}{list(a.shape)}:{_h(a.tobytes())}"


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in sorted(obj.items()) if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _json_digest(text: str):
    """A small JSON document is kept whole (readable diffs); a large one as a hash."""
    cleaned = _clean(json.loads(text))
    dumped = json.dumps(cleaned, sort_keys=True)
    return cleaned if len(dumped) < 4000 else _h(dumped.encode())


def _cell(text: str) -> str:
    """A CSV cell as a number at 6 significant digits (the coarsest float format the
    project's CSV writers have used), so that a change of float format alone is not a
    change of behaviour; arrays (``.npz``, checkpoints) are compared bit for bit."""
    try:
        return format(float(text), ".6g")
    except ValueError:
        return text


def _csv_digests(text: str) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return {"": _h(b"")}
    header, body = rows[0], rows[1:]
    out = {}
    for j, name in enumerate(header):
        if name in VOLATILE_COLUMNS:
            continue
        out[name] = _h("\x1f".join(_cell(r[j] if j < len(r) else "") for r in body).encode())
    return out


def _npz_digests(path: Path) -> dict[str, str]:
    with np.load(path, allow_pickle=False) as z:
        return {name: _array_digest(z[name]) for name in sorted(z.files)
                if name not in VOLATILE_COLUMNS | VOLATILE_KEYS}


def _checkpoint_digests(path: Path) -> dict[str, str]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {}

    def walk(prefix, obj):
        if isinstance(obj, torch.Tensor):
            out[prefix] = _array_digest(obj.detach().cpu().float().numpy()
                                        if obj.dtype == torch.bfloat16 else obj.detach().cpu().numpy())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                if str(k) in VOLATILE_KEYS:
                    continue
                walk(f"{prefix}.{k}" if prefix else str(k), obj[k])
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}[{i}]", v)
        elif isinstance(obj, (int, float, str, bool)) or obj is None:
            out[prefix] = repr(obj)

    walk("", state)
    return out


def folder_digests(folder: Path) -> dict[str, object]:
    """Digest every result file of a run folder (figures and lock files left out)."""
    out: dict[str, object] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.suffix in {".png", ".html", ".lock"} or path.name.startswith("."):
            continue
        if path.suffix == ".npz":
            out[rel] = _npz_digests(path)
        elif path.suffix == ".pt":
            out[rel] = _checkpoint_digests(path)
        elif path.suffix == ".csv":
            out[rel] = _csv_digests(path.read_text())
        elif path.suffix == ".json":
            out[rel] = _json_digest(path.read_text())
    return out


def run_scenario(name: str, workdir: Path) -> dict[str, object]:
    """Run one scenario in a fresh process and return its digests."""
    corpus = workdir / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(CORPUS_TEXT)
    out = workdir / name
    argv = [a.format(out=out, corpus=corpus) for a in SCENARIOS[name]]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, "-m", "alflb", *argv], capture_output=True, text=True,
                          env=env, cwd=workdir, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    if "--json" in argv:
        return {"stdout.json": _json_digest(proc.stdout)}
    return folder_digests(out)


def record_all() -> dict[str, dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        return {name: run_scenario(name, Path(tmp)) for name in SCENARIOS}


if __name__ == "__main__":
    digests = record_all()
    DIGESTS.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    print(f"wrote {DIGESTS} ({len(digests)} scenarios)")
