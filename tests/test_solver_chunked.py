"""The chunked (beyond-memory) solve equals the in-memory solve, and certifies itself."""

from __future__ import annotations

import numpy as np
import pytest

from alflb import AssignmentProblem
from alflb.solvers import certify, solve, solve_chunked


def _skewed(t, e, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((t, e)) + 0.5 * rng.standard_normal(e)


@pytest.mark.parametrize("kind", ["skewed", "ties", "skewed_float32"])
def test_chunked_from_memmap_equals_in_memory(tmp_path, kind):
    scores = _skewed(12_000, 16, 0)
    if kind == "ties":
        scores = np.round(scores, 1)
    if kind == "skewed_float32":  # read and certified as float32, computed in float64
        scores = scores.astype(np.float32)
    path = tmp_path / "scores.npy"
    np.save(path, scores)
    prob = AssignmentProblem(scores, 4)
    ref = solve(prob, "fast")
    cap = 64 * 1024  # 64 KiB of chunk buffers: 128-row chunks, 94 of them
    res = solve_chunked(str(path), 4, max_memory_bytes=cap)
    assert res.success, res.message
    assert res.n_held < scores.shape[0]
    np.testing.assert_allclose(res.objective, ref.objective, rtol=1e-12)
    np.testing.assert_array_equal(res.load_E, prob.capacity_E)
    x = np.zeros_like(scores, dtype=bool)
    np.put_along_axis(x, res.topk_TK.astype(np.int64), True, axis=1)
    cert = certify(prob, x, res.bias_E)
    assert cert.ok, cert.summary()
    if kind != "ties":  # a unique optimum: the same assignment
        np.testing.assert_array_equal(x, ref.assignment_TE)


def test_chunked_on_dask_equals_local(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    scores = _skewed(6000, 8, 1)
    path = tmp_path / "scores.npy"
    np.save(path, scores)
    local = solve_chunked(str(path), 2, max_memory_bytes=32 * 1024)
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=2) as cluster:
        with distributed.Client(cluster) as client:
            remote = solve_chunked(str(path), 2, max_memory_bytes=32 * 1024, client=client)
    assert remote.success and local.success
    assert remote.objective == local.objective
    np.testing.assert_array_equal(remote.topk_TK, local.topk_TK)
    np.testing.assert_array_equal(remote.bias_E, local.bias_E)


def test_chunked_validates():
    with pytest.raises(ValueError, match="max_memory_bytes"):
        solve_chunked(np.zeros((16, 4)), 1, max_memory_bytes=10)
    with pytest.raises(ValueError, match="2-D"):
        solve_chunked(np.zeros(16), 1)


def test_cli_max_memory_matches_in_memory(tmp_path, capsys):
    import json

    from alflb.cli import main
    from alflb.cli.solve import parse_bytes

    scores = _skewed(4000, 8, 2)
    path = tmp_path / "s.npy"
    np.save(path, scores)
    assert parse_bytes("2GiB") == 2**31 and parse_bytes("512kib") == 2**19
    with pytest.raises(ValueError, match="max-memory"):
        parse_bytes("lots")
    rc = main(["solve", "--scores", str(path), "--k", "2", "--max-memory", "16KiB", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and out["success"]
    ref = solve(AssignmentProblem(scores, 2), "fast")
    np.testing.assert_allclose(out["objective"], ref.objective, rtol=1e-12)
