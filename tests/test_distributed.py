"""Data-parallel training: shards, one reduction per step, replicated biases, resume, failures, SIGINT.

Multi-rank runs use gloo on CPU in subprocesses (127.0.0.1, a free port): this file is also
a script (``python tests/test_distributed.py MODE ...``) whose ranks record their biases and
loads after every step, or die / hang at step 2 to test failure handling.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from model_corpus import stdlib_corpus

from alflb.errors import InvalidInputError
from alflb.model.balancing import BalanceConfig, Balancer
from alflb.model.checkpoint import load_checkpoint
from alflb.model.distributed import (
    DistConfig,
    DistContext,
    check_shardable,
    reduce_step,
    shard_batch,
)
from alflb.model.launch import free_port
from alflb.model.train import TrainConfig, read_metrics, train

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def _cfg(corpus: str | Path, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), progress=False, eval_windows=8, steps=STEPS, batch_size=8,
                eval_every=2, checkpoint_every=2)
    return TrainConfig.from_preset("tiny", balance=BalanceConfig(mode="sign", u=1e-2), **{**base, **kw})


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _table(path: Path) -> np.ndarray:
    """``loads.csv`` / ``biases.csv`` as ``(steps, L, E)``."""
    rows = _rows(path)
    a = np.array([[float(r[f"e{k}"]) for k in range(8)] for r in rows])
    return a.reshape(len({r["step"] for r in rows}), -1, 8)


# ------------------------------------------------------------------ the script side


def _record_target(cfg_dict: dict, out: str, fault: str, timeout_s: float) -> int:
    """One rank: train, recording the biases and loads after every step into ``rank{r}.npz``."""
    from alflb.errors import AlflbError

    rank = int(os.environ["RANK"])
    biases, loads = [], []
    end_step = Balancer.end_step

    def recording_end_step(self, model, loads_LE=None):
        if fault != "none" and rank == 1 and len(loads) == 1:  # during step 2
            if fault == "die":
                os._exit(3)
            time.sleep(600)  # "hang"
        out_LE = end_step(self, model, loads_LE=loads_LE)
        loads.append(out_LE.cpu().numpy().copy())
        biases.append(model.biases().cpu().numpy())
        return out_LE

    Balancer.end_step = recording_end_step
    try:
        cfg = TrainConfig.from_dict(cfg_dict)
        if fault == "hang":  # no checkpoint barrier, no replica check: DDP's all-reduce times out
            cfg = dataclasses.replace(cfg, checkpoint_every=100, eval_every=100)
        train(cfg, out, distributed=DistConfig(timeout_s=timeout_s, check_sync=fault == "none"))
    except AlflbError as exc:
        print(f"rank {rank}: {exc}", file=sys.stderr, flush=True)
        return 2
    np.savez(Path(out) / f"rank{rank}.npz", bias_NLE=np.stack(biases), load_NLE=np.stack(loads))
    return 0


def _script_main(argv: list[str]) -> int:
    from alflb.model.launch import launch_local

    fault, out, corpus, timeout_s = argv[0], argv[1], argv[2], float(argv[3])
    return launch_local(2, _record_target, (_cfg(corpus).as_dict(), out, fault, timeout_s), grace_s=2.0)


def _run_script(fault: str, out: Path, corpus: Path, timeout_s: float = 30.0):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, fault, str(out), str(corpus), str(timeout_s)],
                          env=_env(), capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - t0


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return stdlib_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def single_run(corpus_file, tmp_path_factory) -> Path:
    """The single-process reference, 6 steps; grad_accum=2 gives the 2-rank run's micro-batches."""
    out = tmp_path_factory.mktemp("single") / "run"
    train(_cfg(corpus_file, grad_accum=2, steps=6), out)
    return out


@pytest.fixture(scope="module")
def two_rank_run(corpus_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc, _ = _run_script("none", out, corpus_file)
    assert proc.returncode == 0, proc.stderr
    return out


# ------------------------------------------------------------------ unit tests


def test_shards_make_up_the_global_batch():
    x = torch.arange(24).view(12, 2)
    parts = [shard_batch(x, r, 3) for r in range(3)]
    torch.testing.assert_close(torch.cat(parts), x, rtol=0, atol=0)
    assert parts[1].shape == (4, 2)
    with pytest.raises(InvalidInputError, match="does not split into 5 ranks"):
        shard_batch(x, 0, 5)
    check_shardable(8, 2, 2)
    with pytest.raises(InvalidInputError, match=r"batch_size=8 must be a multiple of world_size \* grad_accum = 3 \* 1"):
        check_shardable(8, 1, 3)


def test_single_process_reduction_is_the_identity_and_configs_validate():
    loads = torch.arange(6).view(2, 3)
    out, sums, stop = reduce_step(DistContext(), loads, [1.5, 2.0], True)
    assert out is loads and sums == [1.5, 2.0] and stop is True
    with pytest.raises(InvalidInputError, match="timeout_s must be > 0, got 0"):
        DistConfig(timeout_s=0)
    with pytest.raises(InvalidInputError, match="timeout_s must be a finite number, got nan"):
        DistConfig(timeout_s=float("nan"))
    assert 0 < free_port() < 65536


def test_nproc_refuses_a_batch_that_does_not_shard(corpus_file, tmp_path, capsys):
    from alflb.cli import main

    rc = main(["train", "--preset", "tiny", "--batch-size", "6", "--nproc", "4", "--corpus", str(corpus_file),
               "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 2
    assert "batch_size=6 must be a multiple of world_size * grad_accum = 4 * 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_distributed_knows_nothing_of_the_model_and_the_balancer_never_communicates():
    """Layering: collectives live in distributed.py (no import from alflb.model); the
    balancer only receives reduced counts."""
    import ast

    model_dir = ROOT / "alflb" / "model"
    tree = ast.parse((model_dir / "distributed.py").read_text())
    relative = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1]
    absolute = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert relative == [] and not any(m.startswith("alflb.model") for m in absolute)
    assert "torch.distributed" not in (model_dir / "balancing.py").read_text()


# ------------------------------------------------------------------ two ranks


def test_two_ranks_keep_identical_biases_equal_to_one_process(two_rank_run, single_run):
    r0, r1 = np.load(two_rank_run / "rank0.npz"), np.load(two_rank_run / "rank1.npz")
    assert r0["bias_NLE"].shape == (STEPS, 2, 8)
    np.testing.assert_array_equal(r0["bias_NLE"], r1["bias_NLE"])  # bit-identical on both ranks
    np.testing.assert_array_equal(r0["load_NLE"], r1["load_NLE"])
    # the same global batch as one process: counts exactly equal, biases to float tolerance
    np.testing.assert_array_equal(r0["load_NLE"], _table(single_run / "loads.csv")[:STEPS])
    np.testing.assert_allclose(r0["bias_NLE"], _table(single_run / "biases.csv")[:STEPS], rtol=0, atol=1e-6)
    assert r0["load_NLE"].sum(-1).tolist() == [[8 * 64 * 2] * 2] * STEPS  # global batch, counted once
    # rank 0 alone wrote the run folder; the logs are those of the global batch
    np.testing.assert_array_equal(_table(two_rank_run / "loads.csv"), r0["load_NLE"])
    rows, ref = read_metrics(two_rank_run), read_metrics(single_run)[:STEPS]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for a, b in zip(rows, ref):
        assert a["maxvio_batch"] == b["maxvio_batch"]
        np.testing.assert_allclose(a["lm_loss"], b["lm_loss"], rtol=1e-4)
        assert 0 <= a["maxvio_computation_batch"] <= 3
    assert json.loads((two_rank_run / "config.json").read_text())["world_size"] == 2
    assert load_checkpoint(two_rank_run / "checkpoints")["world_size"] == 2


def test_two_rank_checkpoint_resumes_with_one_process(two_rank_run, single_run, corpus_file, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_rank_run, run)
    result = train(_cfg(corpus_file, steps=6), run, resume=True)  # world size 1 now, grad_accum 1
    assert result.steps == 6
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(_table(run / "loads.csv"), _table(single_run / "loads.csv"))
    np.testing.assert_allclose(_table(run / "biases.csv"), _table(single_run / "biases.csv"), rtol=0, atol=1e-6)


def test_torchrun_launch_matches_one_process(single_run, corpus_file, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "alflb", "train", "--preset", "tiny", "--balance", "sign",
           "--u", "0.01", "--steps", str(STEPS), "--batch-size", "8", "--eval-every", "2",
           "--checkpoint-every", "2", "--corpus", str(corpus_file), "--out", str(out), "--no-progress",
           "--check-sync", "--dist-timeout", "30"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone reports
    cfg = json.loads((out / "config.json").read_text())["train_config"]
    assert cfg["eval_windows"] == 16  # the CLI's preset default, unlike the reference
    np.testing.assert_array_equal(_table(out / "loads.csv"), _table(single_run / "loads.csv")[:STEPS])
    np.testing.assert_allclose(_table(out / "biases.csv"), _table(single_run / "biases.csv")[:STEPS],
                               rtol=0, atol=1e-6)


# ------------------------------------------------------------------ failures


def test_a_rank_that_dies_fails_the_job_with_a_message(corpus_file, tmp_path):
    proc, seconds = _run_script("die", tmp_path / "run", corpus_file, timeout_s=30.0)
    assert proc.returncode != 0, proc.stderr
    # rank 0 may notice the closed connection and exit in the same instant: both are named
    assert "rank 1 of 2 exited with code 3" in proc.stderr and "stopped the other ranks" in proc.stderr
    assert seconds < 60


def test_a_rank_that_hangs_times_out_with_a_message(corpus_file, tmp_path):
    proc, seconds = _run_script("hang", tmp_path / "run", corpus_file, timeout_s=4.0)
    assert proc.returncode == 2, proc.stderr
    assert "rank 0 of 2: the gradient all-reduce (DDP backward) failed" in proc.stderr
    assert "process-group timeout of 4 s" in proc.stderr
    assert "alflb: rank 0 of 2 exited with code 2; stopped the other ranks [1]" in proc.stderr
    assert seconds < 60


# ------------------------------------------------------------------ interrupt


def test_sigint_saves_a_checkpoint_that_resumes(corpus_file, tmp_path):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "alflb", "train", "--preset", "tiny", "--u", "0.01", "--batch-size", "4",
            "--seq-len", "32", "--eval-every", "1000", "--corpus", str(corpus_file), "--out", str(out),
            "--no-progress"]
    proc = subprocess.Popen([*base, "--steps", "2000", "--checkpoint-every", "1"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoints" / "latest.json").exists():  # training has started
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "resume with: alflb train --out" in err and "--resume" in err
    step = load_checkpoint(out / "checkpoints")["step"]
    assert 1 <= step < 2000
    assert [r["step"] for r in read_metrics(out)] == list(range(1, step + 1))
    done = subprocess.run([*base[:4], "--out", str(out), "--steps", str(step + 2), "--resume", "--no-progress"],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(read_metrics(out)) == step + 2


if __name__ == "__main__":
    sys.exit(_script_main(sys.argv[1:]))
