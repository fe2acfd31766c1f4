"""Histogram quantile balancing under data parallelism: summed histograms, one finalise per step.

Two gloo ranks on CPU (``alflb train --nproc 2``) against one process with the same
global batch in the same micro-batches (``--grad-accum 2``). The histogram counts are
integers summed exactly, so the first step's biases agree bit for bit; later steps route
with parameters whose DDP-averaged gradients differ from one process's in the last bits,
so they agree to the histogram's bin width.
"""

from __future__ import annotations

import copy
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

STEPS = 2


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return stdlib_corpus(tmp_path_factory.mktemp("corpus"))


def _argv(corpus: Path, out: Path, balance: str, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny", "--balance", balance, "--steps", str(STEPS), "--eval-every", "2",
            "--checkpoint-every", "2", "--batch-size", "8", "--corpus", str(corpus), "--device", "cpu",
            "--out", str(out), "--no-progress", *extra]


def _one_step(balancer: Balancer, model: DeepSeekMoE, batches: list[torch.Tensor],
              reduce_loads=lambda x: x) -> torch.Tensor:
    balancer.begin_step(model)
    for x in batches:
        balancer.loss(model(x).routing, model)
    balancer.end_step(model, loads_LE=reduce_loads(model.loads()))
    return model.biases()


def test_accumulators_summed_over_two_ranks_give_the_one_process_biases_bit_for_bit():
    """Two balancers in two threads sum through a barrier (an in-process all-reduce)."""
    torch.manual_seed(0)
    model = DeepSeekMoE(get_preset("tiny")).train()
    cfg = BalanceConfig(mode="histogram_quantile")
    x_BT = torch.randint(0, 256, (4, 32))
    halves = [x_BT[:2], x_BT[2:]]
    one = Balancer(cfg, model)
    one.init_biases(model)
    want_LE = _one_step(one, model, halves).clone()  # one process, two micro-batches

    ranks = ThreadSum(2)
    got: list[torch.Tensor | None] = [None, None]

    def rank_main(rank: int) -> None:
        m = copy.deepcopy(model)
        m.reset_loads()
        b = Balancer(cfg, m, reduce_sum=lambda x: ranks.reduce(rank, x))
        b.init_biases(m)
        got[rank] = _one_step(b, m, [halves[rank]], reduce_loads=lambda x: ranks.reduce(rank, x.double()).long())

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    torch.testing.assert_close(got[0], want_LE, rtol=0, atol=0)
    torch.testing.assert_close(got[1], want_LE, rtol=0, atol=0)
    assert float(want_LE.abs().max()) > 0  # the rule moved the biases


@pytest.mark.slow
def test_two_ranks_sum_the_histograms_like_one_process(corpus_file, tmp_path):
    assert main(_argv(corpus_file, tmp_path / "ddp", "histogram_quantile", "--nproc", "2")) == 0
    cfg = TrainConfig.from_preset("tiny", balance=BalanceConfig(mode="histogram_quantile"), corpus=str(corpus_file),
                                  progress=False, steps=STEPS, batch_size=8, grad_accum=2, eval_every=2,
                                  checkpoint_every=2, device="cpu")
    train(cfg, tmp_path / "one")
    ddp, one = run_biases(tmp_path / "ddp"), run_biases(tmp_path / "one")
    assert ddp.shape == (STEPS, 2, 8)
    np.testing.assert_array_equal(ddp[0], one[0])  # step 1: the same scores, exact integer counts
    rule = cfg.balance.make_rule()
    width = (one.max() - one.min() + 2 * rule.margin) / rule.n_bins  # the bin width (lo, hi around the bias)
    np.testing.assert_allclose(ddp, one, rtol=0, atol=2 * width)
    assert np.abs(ddp).max() > 10 * width  # the biases moved: the comparison is not of zeros


def test_the_exact_quantile_rule_is_still_refused_under_data_parallelism(corpus_file, tmp_path, capfd):
    rc = main(_argv(corpus_file, tmp_path / "q", "quantile", "--nproc", "2"))
    assert rc != 0
    err = capfd.readouterr().err
    assert "the 'quantile' rule needs the router scores of the whole global batch, which " \
           "data-parallel ranks do not gather; read it per micro-batch" in err
    assert err.rstrip().endswith("or train it in one process")
