"""alflb: auxiliary-loss-free load balancing for Mixture-of-Experts, as an assignment problem.

The bias that DeepSeek adds to router scores for top-K selection is the dual variable
of the expert-capacity constraints (Han & Zhong, arXiv:2512.03915). This package
implements the problem, its exact solvers, the ALF-LB update family, online
simulators with regret, and a DeepSeekMoE model whose router feeds the same metrics.

Sign convention: the router adds the bias, ``scores + bias``; an overloaded expert's
bias goes down.

The public names below are re-exported lazily (PEP 562): ``import alflb`` loads none of
numpy's heavier neighbours (scipy.stats, numba, torch) until a name that needs them is
first used, so the command line and a notebook's first cell start quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("center_bias", "dual_function", "dual_subgradient", "lagrangian",
                     "primal_objective"), ".duality"),
    **dict.fromkeys(("AlflbError", "ConvergenceWarning", "CorruptFileError",
                     "InfeasibleProblemError", "InvalidInputError", "RoutingTieWarning",
                     "RunFolderExistsError", "SolverError", "SolverUnavailableError",
                     "SweepFailedError", "UnknownNameError"), ".errors"),
    **dict.fromkeys(("imbalance_summary", "max_violation"), ".metrics"),
    **dict.fromkeys(("AssignmentProblem", "balanced_capacity", "rounded_capacity"), ".problem"),
    **dict.fromkeys(("biased_scores", "expert_load", "route_topk", "routing_margin",
                     "topk_indices", "topk_sum"), ".routing"),
    **dict.fromkeys(("RuleState", "RuleUpdate", "UpdateRule", "available_rules", "make_rule"),
                    ".rules"),
    **dict.fromkeys(("SimulationConfig", "SimulationResult", "simulate"), ".simulator"),
    **dict.fromkeys(("Certificate", "SolveResult", "available_methods", "bias_from_assignment",
                     "certify", "solve"), ".solvers"),
    **dict.fromkeys(("available_streams", "make_stream"), ".streams"),
    **dict.fromkeys(("SweepConfig", "SweepResult", "run_sweep"), ".sweep"),
    **dict.fromkeys(("Trace", "TraceRecorder", "import_trace", "load_trace", "save_trace"),
                    ".traces"),
}

__all__ = [
    "AlflbError",
    "AssignmentProblem",
    "Certificate",
    "ConvergenceWarning",
    "CorruptFileError",
    "InfeasibleProblemError",
    "InvalidInputError",
    "RoutingTieWarning",
    "RuleState",
    "RuleUpdate",
    "RunFolderExistsError",
    "SimulationConfig",
    "SimulationResult",
    "SolveResult",
    "SolverError",
    "SolverUnavailableError",
    "SweepConfig",
    "SweepFailedError",
    "SweepResult",
    "Trace",
    "TraceRecorder",
    "UnknownNameError",
    "UpdateRule",
    "__version__",
    "available_methods",
    "available_rules",
    "available_streams",
    "balanced_capacity",
    "bias_from_assignment",
    "biased_scores",
    "center_bias",
    "certify",
    "dual_function",
    "dual_subgradient",
    "expert_load",
    "imbalance_summary",
    "import_trace",
    "lagrangian",
    "load_trace",
    "make_rule",
    "make_stream",
    "max_violation",
    "primal_objective",
    "rounded_capacity",
    "route_topk",
    "routing_margin",
    "run_sweep",
    "save_trace",
    "simulate",
    "solve",
    "topk_indices",
    "topk_sum",
]


# subpackages and modules reachable as attributes (``alflb.rules.SignRule``) without an import
_SUBMODULES = frozenset({"comparators", "duality", "errors", "metrics", "model", "plots",
                         "problem", "regret", "routing", "rules", "schedules", "simulator",
                         "solvers", "streams", "sweep", "traces", "runio"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alflb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .duality import center_bias, dual_function, dual_subgradient, lagrangian, primal_objective
    from .errors import (
        AlflbError,
        ConvergenceWarning,
        CorruptFileError,
        InfeasibleProblemError,
        InvalidInputError,
        RoutingTieWarning,
        RunFolderExistsError,
        SolverError,
        SolverUnavailableError,
        SweepFailedError,
        UnknownNameError,
    )
    from .metrics import imbalance_summary, max_violation
    from .problem import AssignmentProblem, balanced_capacity, rounded_capacity
    from .routing import (
        biased_scores,
        expert_load,
        route_topk,
        routing_margin,
        topk_indices,
        topk_sum,
    )
    from .rules import RuleState, RuleUpdate, UpdateRule, available_rules, make_rule
    from .simulator import SimulationConfig, SimulationResult, simulate
    from .solvers import (
        Certificate,
        SolveResult,
        available_methods,
        bias_from_assignment,
        certify,
        solve,
    )
    from .streams import available_streams, make_stream
    from .sweep import SweepConfig, SweepResult, run_sweep
    from .traces import Trace, TraceRecorder, import_trace, load_trace, save_trace
