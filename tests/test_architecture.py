"""The house rules of the library's layout, checked on the source (see docs/architecture.md).

- No import cycle among library modules, counting imports inside functions and under
  ``TYPE_CHECKING`` (``alflb.cli`` is the application layer and may import anything;
  ``alflb/__init__.py`` re-exports lazily and is not a node).
- No module under ``alflb/`` longer than 500 lines.
- Nothing in the library imports ``proofs_check``.
- ``import alflb`` and ``alflb --help`` load none of the heavy dependencies (numba,
  scipy.stats, torch, matplotlib, cvxpy); the time they take is measured by
  ``benchmarks/import_time.py``, not here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "alflb"
MAX_LINES = 500
HEAVY = ("numba", "scipy.stats", "torch", "matplotlib", "cvxpy", "ortools", "highspy", "tqdm")


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Library modules that ``name`` imports anywhere in its source (lazy ones included)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    lib = {n: p for n, p in mods.items() if n != "alflb" and not n.startswith("alflb.cli")}
    return {n: {t for t in _imports(n, p, mods) if t in lib} for n, p in lib.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_library_modules():
    cycles = find_cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_sees_a_lazy_cycle():
    """Mutation check: a cycle closed by one lazy import is reported."""
    g = {"a": {"b"}, "b": {"c"}, "c": set()}
    assert not find_cycles(g)
    g["c"] = {"a"}
    assert find_cycles(g) == [["a", "b", "c"]]


def test_every_library_module_is_at_most_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_library_never_imports_proofs_check():
    mods = _modules()
    offenders = [n for n, p in mods.items() if not n.startswith("alflb.cli")
                 and any(t.startswith("proofs_check") for t in _raw_imports(p))]
    assert not offenders, offenders


def _raw_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.add(node.module or "")
    return out


@pytest.mark.parametrize("code", [
    "import alflb",
    "import alflb.cli; alflb.cli.build_parser()",
], ids=["import alflb", "alflb --help parser"])
def test_light_entry_points_load_no_heavy_dependency(code):
    probe = (f"import sys; {code}; "
             f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "", f"{code!r} loaded {out}"


def test_no_backend_is_selected_at_import():
    probe = ("import matplotlib; b = matplotlib.get_backend(); import alflb.plots; "
             "import alflb.plots.training; print(matplotlib.get_backend() == b)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={"MPLBACKEND": "svg", "PATH": ""}).stdout
    assert out.strip() == "True"
