"""Hostile inputs and events for ``alflb train``: each is refused in one line or survived, and
nothing a run did not create is lost (issue 14, the training part; issue 18's config items).

Every case here failed before its fix (a traceback, a silent restart, a NaN checkpoint, a
3-million-entry config, ...). The process-level cases (two runs on one folder, a killed
launcher, random kills during checkpoint and trace writes) start real processes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from alflb.cli import main
from alflb.errors import CorruptFileError, InvalidInputError
from alflb.model import TrainConfig, train
from alflb.model.checkpoint import load_checkpoint, resumable_checkpoint
from alflb.model.evaluate import EvalResult
from alflb.model.train import TrainingDiverged
from alflb.model.train_config import estimate_memory, load_run_config

CORPUS = b"for i in range(10):\n    total += i * i  # squares\n" * 400


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_bytes(CORPUS)
    return path


@pytest.fixture(scope="module")
def base_run(corpus, tmp_path_factory) -> Path:
    """One uninterrupted 4-step run (checkpoints at steps 2 and 4), shared read-only."""
    return train(_cfg(corpus), tmp_path_factory.mktemp("base") / "run").run_dir


def _cfg(corpus: Path, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), progress=False, eval_windows=4, steps=4, batch_size=4,
                eval_every=4, checkpoint_every=2, device="cpu")
    return TrainConfig.from_preset("tiny", **{**base, **kw})


def _argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny", "--steps", "2", "--batch-size", "4", "--eval-every", "2",
            "--checkpoint-every", "1", "--device", "cpu", "--corpus", str(corpus), "--out", str(out),
            "--no-progress", *extra]


def _one_line_error(capsys, argv: list[str], match: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("alflb train: error")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ 1. resume without latest.json


def test_resume_without_latest_json_continues_from_the_newest_verified_checkpoint(corpus, base_run, tmp_path):
    cut = tmp_path / "cut"
    train(_cfg(corpus, checkpoint_every=1), cut, stop_after=3)
    (cut / "checkpoints" / "latest.json").unlink()
    before = (cut / "checkpoints" / "step_00000003.pt").read_bytes()
    path, ckpt = resumable_checkpoint(cut / "checkpoints")
    assert path.name == "step_00000003.pt" and ckpt["step"] == 3 and "sha256" in ckpt
    resumed = train(_cfg(corpus, checkpoint_every=1), cut, resume=True)
    assert resumed.steps == 4
    assert [r.split(",")[0] for r in (cut / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3", "4"]
    a, b = load_checkpoint(base_run / "checkpoints"), load_checkpoint(cut / "checkpoints")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert (cut / "checkpoints" / "step_00000003.pt").read_bytes() == before  # resumed from, not rewritten


def test_resume_refuses_when_no_checkpoint_verifies_and_changes_nothing(corpus, base_run, tmp_path):
    import shutil

    run = shutil.copytree(base_run, tmp_path / "run")
    (run / "checkpoints" / "latest.json").unlink()
    for p in (run / "checkpoints").glob("step_*.pt"):
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte in the tensors
        p.write_bytes(bytes(data))
    snapshot = _tree(run)
    with pytest.raises(CorruptFileError, match="none of its 2 checkpoint files verifies"):
        train(_cfg(corpus), run, resume=True)
    assert _tree(run) == snapshot


def test_a_checkpoint_renamed_to_another_step_does_not_verify(base_run, tmp_path):
    (tmp_path / "step_00000009.pt").write_bytes((base_run / "checkpoints" / "step_00000004.pt").read_bytes())
    with pytest.raises(CorruptFileError, match="not the step of its name"):
        load_checkpoint(tmp_path / "step_00000009.pt")


# ------------------------------------------------------------------ 2. two runs on one folder


@pytest.mark.slow
def test_two_runs_started_together_on_one_folder_one_fails_clearly(corpus, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "alflb", *_argv(corpus, out)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    err = next(r[2] for r in results if r[0] == 2)
    assert "Traceback" not in err and ("claimed by another run" in err or "already holds results" in err), err
    assert load_checkpoint(out / "checkpoints")["step"] == 2


# ------------------------------------------------------------------ 3. ranks die with the launcher


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_ranks_die_with_a_killed_launcher(corpus, tmp_path, sig):
    out = tmp_path / "run"
    argv = _argv(corpus, out, "--nproc", "2")
    argv[argv.index("--steps") + 1] = "100000"
    argv[argv.index("--checkpoint-every") + 1] = "50"
    proc = subprocess.Popen([sys.executable, "-m", "alflb", *argv], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.csv").exists() or (out / "metrics.csv").stat().st_size < 300:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the ranks did not start training"
            time.sleep(0.1)
        ranks += [c for c in _children(proc.pid) if "multiprocessing" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(ranks) >= 2, ranks
        proc.send_signal(sig)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 20
        while any(_alive(r) for r in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(r) for r in ranks), "a rank outlived its launcher"
        if sig == signal.SIGTERM:  # like Ctrl-C: the ranks stopped with a checkpoint
            assert proc.returncode == 130
            assert load_checkpoint(out / "checkpoints")["step"] >= 1
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
        for r in ranks:  # orphans of a failed check: never leave them training
            if _alive(r):
                os.kill(r, signal.SIGKILL)


# ------------------------------------------------------------------ 4. non-finite training


def test_inf_learning_rate_is_refused(capsys, corpus, tmp_path):
    _one_line_error(capsys, _argv(corpus, tmp_path / "r", "--lr", "inf"), "lr must be a finite number")
    assert not (tmp_path / "r").exists()


def test_a_diverging_run_stops_keeps_its_last_good_checkpoint_and_writes_no_nan(corpus, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+: .*not finite|is (nan|inf)"):
        train(_cfg(corpus, lr=1e30, steps=6, grad_clip=0.0, warmup_steps=1, checkpoint_every=1), run)
    for p in (run / "checkpoints").glob("step_*.pt"):
        ck = load_checkpoint(p)
        assert all(bool(v.isfinite().all()) for v in ck["model"].values() if v.is_floating_point()), p
    text = (run / "metrics.csv").read_text().lower()
    assert "nan" not in text and "inf" not in text


def test_a_huge_validation_loss_has_infinite_perplexity():
    ev = EvalResult.from_totals(1e6, np.ones((1, 4), np.int64))
    assert ev.ppl == math.inf and ev.loss == 1e6


# ------------------------------------------------------------------ 5. one line, no traceback


def test_resume_into_a_simulation_run_folder(capsys, corpus, tmp_path):
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "config.json").write_text(json.dumps({"kind": "simulate", "u": 0.01}))
    snapshot = _tree(sim)
    _one_line_error(capsys, _argv(corpus, sim, "--resume"), "not the configuration of a training run")
    assert _tree(sim) == snapshot


def test_resume_into_a_foreign_folder_speaks_the_flags(capsys, corpus, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    line = _one_line_error(capsys, _argv(corpus, tmp_path, "--resume"), "not a training run folder")
    assert "choose another folder" in line and "overwrite=True" not in line
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_existing_folder_message_speaks_the_flags(capsys, corpus, tmp_path):
    (tmp_path / "x.txt").write_text("x")
    line = _one_line_error(capsys, _argv(corpus, tmp_path), "already holds results")
    assert "--resume" in line and "resume=True" not in line


def test_resume_with_a_trace_lacking_its_metadata(capsys, corpus, tmp_path):
    run = tmp_path / "run"
    assert main(_argv(corpus, run, "--trace-steps", "1,2")) == 0
    capsys.readouterr()
    from alflb.traces import load_trace

    trace = load_trace(run / "traces" / "trace.npz")
    trace.metadata.clear()
    trace.save(run / "traces" / "trace.npz")
    _one_line_error(capsys, _argv(corpus, run, "--resume", "--steps", "3", "--trace-steps", "1,2"),
                    "lacks the metadata")


def test_a_torn_last_metrics_row_is_repaired_on_resume(corpus, base_run, tmp_path):
    import shutil

    run = shutil.copytree(base_run, tmp_path / "run")
    metrics = run / "metrics.csv"
    metrics.write_text(metrics.read_text() + "1")  # a crash tore the next row in its step cell ("10,...")
    train(_cfg(corpus, steps=5), run, resume=True)
    rows = metrics.read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]
    assert len({len(r.split(",")) for r in rows}) == 1
    train(_cfg(corpus, steps=6), run, resume=True)  # and the next resume works too
    assert len(metrics.read_text().splitlines()) == 7


@pytest.mark.parametrize("flags,match", [
    (["--batch-size", "4000000", "--seq-len", "4096"], "GiB"),
    (["--seed", "-1"], "seed must be an integer >= 0"),
    (["--seed", str(2**70)], "seed must be an integer <="),
    (["--steps", "1e9"], None),
])
def test_impossible_sizes_and_seeds(capsys, corpus, tmp_path, flags, match):
    argv = _argv(corpus, tmp_path / "r", *flags)
    if match is None:  # argparse's own one line (exit 2)
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert "invalid int value" in capsys.readouterr().err
    else:
        _one_line_error(capsys, argv, match)
    assert not (tmp_path / "r").exists()


def test_memory_estimate_counts_the_traces():
    small = TrainConfig.from_preset("tiny", steps=10, progress=False)
    traced = TrainConfig.from_preset("tiny", steps=10, trace_steps=tuple(range(1, 11)), progress=False)
    assert estimate_memory(traced)["traces"] > estimate_memory(small)["traces"] == 0


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
@pytest.mark.parametrize("kind", ["dangling", "to_folder"])
def test_symlinked_out_is_refused(capsys, corpus, tmp_path, kind):
    target = tmp_path / "target"
    if kind == "to_folder":
        target.mkdir()
        (target / "keep.txt").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    _one_line_error(capsys, _argv(corpus, link, "--overwrite"), "is a symbolic link")
    assert link.is_symlink()
    if kind == "to_folder":
        assert (target / "keep.txt").read_text() == "keep"
    else:
        assert not target.exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_out_is_one_line(capsys, corpus, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _one_line_error(capsys, _argv(corpus, ro / "run"), "ermission")
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------ 6. resource blow-ups


def test_trace_steps_are_clipped_to_steps_and_stored_compactly():
    cfg = TrainConfig.from_preset("tiny", steps=5, trace_steps="1:3000000", progress=False)
    assert cfg.trace_steps == (1, 2, 3, 4, 5)
    long = TrainConfig.from_preset("tiny", steps=4000, trace_steps="1:3000000", progress=False)
    assert long.as_dict()["trace_steps"] == "1:4000:1"
    assert TrainConfig.from_dict(long.as_dict()) == long


@pytest.mark.slow
def test_cli_trace_steps_and_intervals_past_steps(capsys, corpus, tmp_path):
    run = tmp_path / "run"
    assert main(_argv(corpus, run, "--trace-steps", "1:3000000", "--eval-every", "1000000",
                      "--checkpoint-every", "1000000", "--trace-max-tokens", "1000000000")) == 0
    assert "past --steps 2 are dropped" in capsys.readouterr().err
    assert (run / "config.json").stat().st_size < 10_000
    assert load_run_config(run).trace_steps == (1, 2)
    assert load_checkpoint(run / "checkpoints")["step"] == 2


# ------------------------------------------------------------------ issue 18


def test_config_json_stores_the_values_used(base_run):
    resolved = json.loads((base_run / "config.json").read_text())["resolved"]
    assert resolved["rule"] == {"name": "sign", "u": 1e-3, "schedule": None}
    assert resolved["balance_loss_alpha"] == 0.0
    assert resolved["trace_max_tokens"] == 4 * 64 and resolved["dense_hidden"] == 96


@pytest.mark.slow
def test_config_flag_re_runs_a_run_exactly(capsys, corpus, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(_argv(corpus, first, "--seed", "3", "--lr", "0.002")) == 0
    assert main(["train", "--config", str(first / "config.json"), "--out", str(again), "--no-progress"]) == 0
    capsys.readouterr()
    a, b = load_checkpoint(first / "checkpoints"), load_checkpoint(again / "checkpoints")
    assert a["step"] == b["step"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_tensorboard_without_the_package_says_so_once(capsys, corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(_argv(corpus, tmp_path / "run", "--tensorboard")) == 0
    err = capsys.readouterr().err
    assert err.count("--tensorboard needs the tensorboard package") == 1


# ------------------------------------------------------------------ 7. random kills


def _kill_cmd(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "alflb", "train", "--preset", "tiny", "--balance", "momentum", "--u", "0.01",
            "--steps", "8", "--checkpoint-every", "1", "--eval-every", "4", "--batch-size", "4",
            "--trace-steps", "1:8", "--device", "cpu", "--corpus", str(corpus), "--out", str(out),
            "--no-progress", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_kills_during_checkpoint_and_trace_writes(corpus, tmp_path, seed):
    """SIGKILL after a random delay (three times), resume; the final checkpoint and trace equal an
    uninterrupted run's bit for bit, and nothing outside the run folder changes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "neighbour.txt").write_text("untouched")
    full = tmp_path / "full"
    assert subprocess.run(_kill_cmd(corpus, full), env=env, capture_output=True, timeout=300).returncode == 0
    rng = np.random.default_rng(seed)
    out = parent / "run"
    for _attempt in range(3):
        before = {p: p.read_bytes() for p in parent.iterdir() if p.is_file()}
        extra = ("--resume",) if out.exists() else ()
        proc = subprocess.Popen(_kill_cmd(corpus, out, *extra), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(2.0, 9.0)))
        proc.kill()
        proc.wait()
        assert {p: p.read_bytes() for p in parent.iterdir() if p.is_file()} == before
        assert sorted(p.name for p in parent.iterdir()) == ["neighbour.txt", "run"] or not out.exists()
    done = subprocess.run(_kill_cmd(corpus, out, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr  # no kill point leaves a folder that cannot resume
    a, b = load_checkpoint(full / "checkpoints"), load_checkpoint(out / "checkpoints")
    assert a["step"] == b["step"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ta, tb = np.load(full / "traces" / "trace.npz"), np.load(out / "traces" / "trace.npz")
    np.testing.assert_array_equal(ta["scores_NLTE"], tb["scores_NLTE"])
    assert (parent / "neighbour.txt").read_text() == "untouched"


def test_the_diverged_error_is_an_alflb_error():
    from alflb.errors import AlflbError

    assert issubclass(TrainingDiverged, AlflbError) and not issubclass(TrainingDiverged, InvalidInputError)
