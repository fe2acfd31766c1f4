"""Megatron's quantile balancing under data parallelism: per-micro-batch sweeps summed over ranks.

Under ``semantics="megatron"`` every rank sweeps its own micro-batches; the sweeps and
their number travel in one ``reduce_sum``, so the new bias is the plain mean over all the
micro-batches of the global batch, as megatron-core averages over micro-batches and
data-parallel ranks. Two gloo ranks on CPU (``alflb train --nproc 2``) are compared with
one process that runs the same micro-batches (``grad_accum=2``). The exact quantile of the
whole global batch (``quantile_scope="global"``) stays refused on several ranks.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from model_corpus import ThreadSum, run_biases, stdlib_corpus

from alflb.cli import main
from alflb.model.balancing import BalanceConfig, Balancer
from alflb.model.config import get_preset
from alflb.model.train import TrainConfig, train
from alflb.model.transformer import DeepSeekMoE

STEPS = 3
MEGATRON = dict(semantics="megatron", n_groups=1, topk_groups=1)  # megatron-core: no group limit


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return stdlib_corpus(tmp_path_factory.mktemp("corpus"))


def _step(balancer: Balancer, model: DeepSeekMoE, batches: list[torch.Tensor]) -> torch.Tensor:
    balancer.begin_step(model)
    for x in batches:
        balancer.loss(model(x).routing, model)
    balancer.end_step(model)
    return model.biases().clone()


def test_ranks_with_unequal_micro_batches_give_the_plain_mean_over_the_global_batch():
    """Rank 0 routes one micro-batch, rank 1 two: the mean weighs all three alike, as one process does.

    Two balancers in two threads sum through a barrier (an in-process all-reduce).
    """
    torch.manual_seed(0)
    model = DeepSeekMoE(get_preset("tiny", **MEGATRON)).train()
    cfg = BalanceConfig(mode="quantile")
    gen = torch.Generator().manual_seed(3)
    micro = [torch.randint(0, 256, (2, 32), generator=gen) for _ in range(3)]
    want_LE = _step(*_local(cfg, model), micro)  # one process, three micro-batches
    assert float(want_LE.abs().max()) > 1e-2  # the rule moved the biases

    ranks = ThreadSum(2)
    got: list[torch.Tensor | None] = [None, None]
    shares = [micro[:1], micro[1:]]

    def rank_main(rank: int) -> None:
        m = copy.deepcopy(model)
        b = Balancer(cfg, m, reduce_sum=lambda x: ranks.reduce(rank, x))
        b.init_biases(m)
        got[rank] = _step(b, m, shares[rank])

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for rank in (0, 1):
        torch.testing.assert_close(got[rank], want_LE, rtol=0, atol=1e-6)
        assert len(ranks.calls[rank]) == 1  # one reduction per optimiser step, every layer in it
    # the local means differ: a rank that did not reduce would hold other biases
    assert not torch.allclose(got[0], _step(*_local(cfg, model), shares[0]), atol=1e-4)


def _local(cfg: BalanceConfig, model: DeepSeekMoE) -> tuple[Balancer, DeepSeekMoE]:
    m = copy.deepcopy(model)
    b = Balancer(cfg, m)
    b.init_biases(m)
    return b, m


def test_two_ranks_average_the_micro_batch_sweeps_like_one_process(corpus_file, tmp_path):
    one_cfg = TrainConfig.from_preset(
        "tiny", model_overrides=MEGATRON, balance=BalanceConfig(mode="quantile"), corpus=str(corpus_file),
        progress=False, steps=STEPS, batch_size=8, grad_accum=2, eval_every=STEPS, checkpoint_every=STEPS,
        device="cpu")
    train(one_cfg, tmp_path / "one")
    # world 2 x grad_accum 1: rank r's shard of each global batch is the one process's micro-batch r
    saved = tmp_path / "ddp.json"
    saved.write_text(json.dumps({"train_config": dataclasses.replace(one_cfg, grad_accum=1).as_dict()}))
    assert main(["train", "--config", str(saved), "--nproc", "2", "--out", str(tmp_path / "ddp"),
                 "--no-progress", "--check-sync"]) == 0
    ddp, one = run_biases(tmp_path / "ddp"), run_biases(tmp_path / "one")
    assert ddp.shape == one.shape == (STEPS, 2, 8)
    np.testing.assert_allclose(ddp, one, rtol=0, atol=1e-6)
    assert np.abs(one).max() > 1e-2  # the biases moved: the comparison is not of zeros
    np.testing.assert_allclose(one.sum(-1), 0, atol=1e-5)  # centred


def test_the_global_batch_quantile_is_refused_on_several_ranks_in_one_line(corpus_file, tmp_path, capfd):
    out = tmp_path / "q"
    rc = main(["train", "--preset", "tiny", "--balance", "quantile", "--steps", "1", "--batch-size", "8",
               "--corpus", str(corpus_file), "--device", "cpu", "--out", str(out), "--no-progress",
               "--nproc", "2"])  # the default semantics: one sweep on the global batch
    err = capfd.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "the 'quantile' rule needs the router scores of the whole global batch, which data-parallel " \
           "ranks do not gather; read it per micro-batch (model semantics 'megatron'" in lines[0]
    assert lines[0].endswith("or train it in one process")
    assert not out.exists()  # refused before any process started
