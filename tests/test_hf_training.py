"""attach_balancer in real training: two DistributedDataParallel ranks over gloo, and
``transformers.Trainer`` end to end with gradient accumulation (needs accelerate).

The two-rank runs use gloo on CPU in subprocesses (127.0.0.1, a free port), as in
tests/test_distributed.py: this file is also a script (``python tests/test_hf_training.py
OUT ARCH RULE``) whose ranks train a tiny model on their own batches and record, after
every optimiser step, their local counts, the loads the balancer used and the biases.
``ALFLB_TEST_DROP_ALL_REDUCE=1`` makes ``torch.distributed.all_reduce`` a no-op in the
ranks (DDP's own gradient reduction is untouched): the failure the test must detect.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the transformers integration needs transformers (alflb[hf])")

from alflb.integrations.transformers import attach_balancer, tiny_model
from alflb.rules import RuleState, make_rule

ROOT = Path(__file__).resolve().parents[1]
STEPS, MICRO, BATCH, SEQ, K = 3, 2, 2, 8, 2
RULES = {"sign": dict(u=1e-2), "momentum": dict(u=1e-2)}


def batch(step: int, micro: int, rank: int) -> torch.Tensor:
    """The token ids of one rank's micro-batch: every rank reads different data."""
    seed = 1000 * rank + 10 * step + micro
    return torch.randint(0, 64, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the script side


def _rank_target(out: str, arch: str, rule_name: str, no_sync: bool) -> int:
    """One rank: DDP training with gradient accumulation; records ``rank{r}.npz``."""
    import contextlib
    from datetime import timedelta

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    if os.environ.get("ALFLB_TEST_DROP_ALL_REDUCE") == "1":
        dist.all_reduce = lambda tensor, *a, **kw: None
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    rank = dist.get_rank()
    model = tiny_model(arch, seed=0)
    bal = attach_balancer(model, make_rule(rule_name, **RULES[rule_name]))  # before DDP
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    local, used, biases = [], [], []
    for step in range(STEPS):
        for micro in range(MICRO):
            last = micro == MICRO - 1
            quiet = contextlib.nullcontext() if last or not no_sync else ddp.no_sync()
            with quiet:
                x = batch(step, micro, rank)
                (ddp(input_ids=x, labels=x).loss / MICRO).backward()
        opt.step()
        opt.zero_grad()
        local.append(bal.load_LE.cpu().numpy().copy())
        used.append(bal.step().numpy())
        biases.append(bal.biases().numpy())
    np.savez(Path(out) / f"rank{rank}.npz", local_NLE=np.stack(local), used_NLE=np.stack(used),
             bias_NLE=np.stack(biases))
    dist.destroy_process_group()
    return 0


def _script_main(argv: list[str]) -> int:
    from alflb.model.launch import launch_local

    out, arch, rule_name, no_sync = argv[0], argv[1], argv[2], argv[3] == "no_sync"
    return launch_local(2, _rank_target, (out, arch, rule_name, no_sync), grace_s=2.0)


def _two_ranks(tmp_path: Path, arch: str, rule_name: str, *, drop_all_reduce: bool = False,
               no_sync: bool = True) -> tuple[dict, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ALFLB_TEST_DROP_ALL_REDUCE"):
        env.pop(k, None)
    if drop_all_reduce:
        env["ALFLB_TEST_DROP_ALL_REDUCE"] = "1"
    proc = subprocess.run([sys.executable, __file__, str(tmp_path), arch, rule_name,
                           "no_sync" if no_sync else "sync"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(tmp_path / "rank0.npz")), dict(np.load(tmp_path / "rank1.npz"))


# ------------------------------------------------------------------ the reference


def _single_process(arch: str, rule_name: str) -> np.ndarray:
    """Each rank's local counts ``(STEPS, 2, L, E)`` from one process without distributed.

    The same model and batches; the gradient is the mean over both ranks' micro-batches
    (what DDP applies) and the bias follows the summed counts, so routing matches the ranks.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_model(arch, seed=0)
        bal = attach_balancer(model, make_rule(rule_name, **RULES[rule_name]))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        counts = []
        for step in range(STEPS):
            per_rank = []
            for rank in range(2):
                before = bal.load_LE.clone()
                for micro in range(MICRO):
                    x = batch(step, micro, rank)
                    (model(input_ids=x, labels=x).loss / (2 * MICRO)).backward()
                per_rank.append((bal.load_LE - before).numpy())
            counts.append(np.stack(per_rank))
            opt.step()
            opt.zero_grad()
            bal.step()
        return np.stack(counts)
    finally:
        torch.set_num_threads(threads)


def _rule_biases(rule_name: str, loads_NLE: np.ndarray) -> np.ndarray:
    """The biases the pure rule gives when fed ``loads_NLE`` step after step (biases start at 0)."""
    rule = make_rule(rule_name, **RULES[rule_name])
    n_layers, n_experts = loads_NLE.shape[1:]
    out = np.zeros(loads_NLE.shape)
    for layer in range(n_layers):
        bias = torch.zeros(n_experts)
        state = rule.init_state(n_experts, like=bias)
        for n, load in enumerate(loads_NLE[:, layer]):
            upd = rule.update(bias, torch.as_tensor(load, dtype=torch.float64), load.sum() / n_experts, state)
            bias = torch.as_tensor(upd.bias_E, dtype=torch.float32)
            state = RuleState(n_updates=upd.state.n_updates, velocity_E=None if upd.state.velocity_E is None
                              else torch.as_tensor(upd.state.velocity_E, dtype=torch.float32))
            out[n, layer] = bias.numpy()
    return out


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize(("arch", "rule_name", "no_sync"),
                         [("mixtral", "sign", True), ("deepseek_v3", "momentum", False)])
def test_two_ddp_ranks_sum_their_counts_and_keep_identical_biases(tmp_path, arch, rule_name, no_sync):
    """Gradient accumulation under ``ddp.no_sync()`` (as accelerate does) and without it
    (DDP then re-broadcasts rank 0's buffers before every micro-batch's forward)."""
    r0, r1 = _two_ranks(tmp_path, arch, rule_name, no_sync=no_sync)
    n_layers = r0["bias_NLE"].shape[1]
    # every rank counted its own micro-batches, all tokens, top-K, per layer
    for r in (r0, r1):
        np.testing.assert_array_equal(r["local_NLE"].sum(-1), MICRO * BATCH * SEQ * K)
    assert not np.array_equal(r0["local_NLE"], r1["local_NLE"])  # different data on each rank
    # the local counts are those of one process without distributed, rank by rank
    ref = _single_process(arch, rule_name)
    np.testing.assert_array_equal(r0["local_NLE"], ref[:, 0])
    np.testing.assert_array_equal(r1["local_NLE"], ref[:, 1])
    # both ranks used the global counts, and hold bit-identical biases after every step
    summed = r0["local_NLE"] + r1["local_NLE"]
    np.testing.assert_array_equal(r0["used_NLE"], summed)
    np.testing.assert_array_equal(r1["used_NLE"], summed)
    np.testing.assert_array_equal(r0["bias_NLE"], r1["bias_NLE"])
    assert r0["bias_NLE"].shape == (STEPS, n_layers, 8) and np.abs(r0["bias_NLE"][-1]).max() > 0
    # and those biases are the pure rule's on the summed counts
    np.testing.assert_allclose(r0["bias_NLE"], _rule_biases(rule_name, summed), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_without_the_all_reduce_the_ranks_drift_apart(tmp_path):
    """The failure the test above guards against: each rank updating from its own counts."""
    r0, r1 = _two_ranks(tmp_path, "mixtral", "sign", drop_all_reduce=True)
    assert not np.array_equal(r0["bias_NLE"], r1["bias_NLE"])
    assert not np.array_equal(r0["used_NLE"], r0["local_NLE"] + r1["local_NLE"])


# ------------------------------------------------------------------ transformers.Trainer


def test_trainer_with_gradient_accumulation_steps_the_balancer_once_per_optimiser_step(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (alflb[hf])")
    from transformers import Trainer, TrainingArguments

    steps, accum = 3, 2
    model = tiny_model("mixtral", seed=0)
    bal = attach_balancer(model, make_rule("sign", u=1e-2))
    callback = bal.callback()
    data = [{"input_ids": x, "labels": x} for n in range(steps * accum * BATCH)
            for x in [torch.randint(0, 64, (SEQ,), generator=torch.Generator().manual_seed(n))]]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, max_steps=steps,
                             per_device_train_batch_size=BATCH, gradient_accumulation_steps=accum,
                             learning_rate=1e-2, seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    n_layers = len(bal.sites)
    assert trainer.state.global_step == steps
    # one update per optimiser step, after both micro-batches were counted
    assert len(callback.loads_NLE) == steps and bal.n_updates_L.tolist() == [steps] * n_layers
    assert bal.counted_forwards == steps * accum * n_layers
    loads = np.stack(callback.loads_NLE)
    np.testing.assert_array_equal(loads.sum(-1), accum * BATCH * SEQ * K)  # every token, top-K
    assert int(bal.load_LE.sum()) == 0
    moved = bal.biases()
    assert moved.abs().max() > 0
    assert all(torch.equal(s.bias, moved[i]) for i, s in enumerate(bal.sites))  # routers see it


if __name__ == "__main__":
    sys.exit(_script_main(sys.argv[1:]))
