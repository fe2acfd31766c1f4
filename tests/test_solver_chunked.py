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


def test_chunked_on_dask_threads_with_the_workqueue_layer(tmp_path):
    """Dask tasks run side by side on a worker's threads; numba's workqueue layer aborts the
    process when two threads launch parallel kernels at once, so each task runs the serial
    builds. Chunks of 131,072 scores would take the parallel route kernel otherwise."""
    pytest.importorskip("dask.distributed")
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import numpy as np
        from dask import distributed
        from alflb.solvers import solve_chunked
        rng = np.random.default_rng(0)
        np.save({str(tmp_path / "s.npy")!r}, rng.standard_normal((65536, 8)) + 0.5 * rng.standard_normal(8))
        with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=2) as cluster:
            with distributed.Client(cluster) as client:
                res = solve_chunked({str(tmp_path / "s.npy")!r}, 2, max_memory_bytes=16384 * 32 * 8, client=client)
        print("certified", res.success)
    """)
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and "certified True" in out.stdout, out.stderr[-2000:]
