"""Kill ``python -m alflb train`` with SIGKILL after its first checkpoint, resume it, and
compare with an uninterrupted run: parameters, router biases and optimiser state are
bit-identical on the CPU.

The in-process equivalent (stop after a step, resume) is
``test_train.py::test_resume_continues_the_exact_trajectory``; this one interrupts a real
process at an arbitrary point, so the run folder holds whatever a crash leaves behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alflb.model.checkpoint import load_checkpoint

STEPS = 24
EVERY = 4


def _cmd(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "alflb", "train", "--preset", "tiny", "--balance", "momentum",
            "--u", "0.01", "--steps", str(STEPS), "--checkpoint-every", str(EVERY),
            "--eval-every", str(STEPS), "--batch-size", "4", "--device", "cpu",
            "--corpus", str(corpus), "--out", str(out), "--no-progress", *extra]


def _env() -> dict[str, str]:
    # One thread each: identical arithmetic to the uninterrupted run, and no oversubscription.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_bytes(b"for i in range(10):\n    total += i * i  # squares\n" * 800)
    killed, full = tmp_path / "killed", tmp_path / "full"

    proc = subprocess.Popen(_cmd(corpus, killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    pointer = killed / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 120
    try:
        while not pointer.exists():
            if proc.poll() is not None:
                pytest.fail(f"training ended before its first checkpoint: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within 120 s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    step_at_kill = load_checkpoint(killed / "checkpoints")["step"]
    assert step_at_kill < STEPS, "the run finished before it could be killed"

    resumed = subprocess.run(_cmd(corpus, killed, "--resume"), env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = subprocess.run(_cmd(corpus, full), env=_env(), capture_output=True, text=True,
                                   timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    a, b = load_checkpoint(full / "checkpoints"), load_checkpoint(killed / "checkpoints")
    assert a["step"] == b["step"] == STEPS
    assert a["model"].keys() == b["model"].keys()
    biases = [k for k in a["model"] if k.endswith("expert_bias")]
    assert biases
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    for sa, sb in zip(a["balancer"]["states"], b["balancer"]["states"]):
        assert sa["n_updates"] == sb["n_updates"] == STEPS
        assert torch.equal(sa["velocity_E"], sb["velocity_E"])
    assert b["data_position"] == STEPS
