"""Serial and parallel numba builds of one loop are cached apart.

numba's disk cache keys a compilation by name, line, signature, CPU and bytecode, not by
``parallel``: two cached dispatchers of one Python function share entries, and the second
build loads the first one's code in every later process. That hid the simulator's and the
solver's threads (the parallel route kernel ran the serial code). These tests fail if the
builds share a cache again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import pytest

TOY = '''
from numba import prange
from alflb._jit import serial_and_parallel

def total(x):
    s = 0.0
    for i in prange(x.shape[0]):
        s += x[i]
    return s

SHARED = {shared}
if SHARED:  # the bug: one function, two cached dispatchers
    import numba
    serial = numba.njit(cache=True)(total)
    parallel = numba.njit(cache=True, parallel=True)(total)
else:
    serial, parallel = serial_and_parallel(total)
'''

CALL = '''
import sys, numpy as np, numba
sys.path.insert(0, {folder!r})
import {module} as m
m.{which}(np.ones(64))
try:
    numba.threading_layer()
    print("parallel code ran")
except ValueError:
    print("no parallel region ran")
'''


def _run(code: str, cache: Path) -> str:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("shared", [False, True])
def test_parallel_build_runs_parallel_after_the_serial_one_was_cached(tmp_path: Path, shared: bool) -> None:
    """Process 1 compiles and caches the serial build; process 2 calls the parallel one.
    With separate caches it runs a parallel region; with the shared cache (the bug,
    reproduced) it loads the serial code and never does."""
    module = "toy_shared" if shared else "toy_apart"
    (tmp_path / f"{module}.py").write_text(TOY.format(shared=shared))
    cache = tmp_path / "cache"
    call = textwrap.dedent(CALL)
    assert _run(call.format(folder=str(tmp_path), module=module, which="serial"), cache) == "no parallel region ran"
    second = _run(call.format(folder=str(tmp_path), module=module, which="parallel"), cache)
    expected = "no parallel region ran" if shared else "parallel code ran"
    assert second == expected, (
        "numba now caches the two builds apart by itself (alflb._jit is no longer needed)" if shared
        else "the parallel build loaded the serial one's cached code")


def test_simulator_route_kernel_runs_parallel_after_its_serial_build_was_cached(tmp_path: Path) -> None:
    code = textwrap.dedent('''
        import numpy as np, numba
        import alflb._kernels as K
        s = np.random.default_rng(0).random((300, 16))
        args = (s, np.zeros(16), 2, False, np.empty((0, 2), np.int64), np.zeros((2, 16), np.int64), np.zeros(2))
        K._fused_route_{which}(*args)
        try:
            numba.threading_layer()
            print("parallel code ran")
        except ValueError:
            print("no parallel region ran")
    ''')
    cache = tmp_path / "cache"
    assert _run(code.format(which="serial"), cache) == "no parallel region ran"
    assert _run(code.format(which="parallel"), cache) == "parallel code ran"


def _dispatchers(module):
    for value in vars(module).values():
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, numba.core.registry.CPUDispatcher):
                yield item


def test_no_two_cached_kernels_share_a_cache_name() -> None:
    """Every cached dispatcher in the kernel modules has its own (qualified name, line)."""
    import alflb._kernels
    import alflb.solvers._graph
    import alflb.solvers._kernels_certify
    import alflb.solvers._kernels_fast
    import alflb.solvers._ssp
    import alflb.solvers._ssp_lists

    seen: dict[tuple[str, str, int], str] = {}
    modules = (alflb._kernels, alflb.solvers._graph, alflb.solvers._kernels_certify, alflb.solvers._kernels_fast,
               alflb.solvers._ssp, alflb.solvers._ssp_lists)
    n = 0
    for module in modules:
        for disp in _dispatchers(module):
            if not disp.targetoptions.get("cache", False) and disp._cache.__class__.__name__ == "NullCache":
                continue
            fn = disp.py_func
            key = (fn.__module__, fn.__qualname__, fn.__code__.co_firstlineno)
            options = repr(sorted(disp.targetoptions.items()))
            assert seen.setdefault(key, options) == options, f"{key} is compiled twice with one cache name"
            n += 1
    assert n >= 10
