"""alflb: auxiliary-loss-free load balancing for Mixture-of-Experts, as an assignment problem.

The bias that DeepSeek adds to router scores for top-K selection is the dual variable
of the expert-capacity constraints (Han & Zhong, arXiv:2512.03915). This package
implements the problem, its exact solvers, the ALF-LB update family, online
simulators with regret, and a DeepSeekMoE model whose router feeds the same metrics.

Sign convention: the router adds the bias, ``scores + bias``; an overloaded expert's
bias goes down.
"""

from .duality import center_bias, dual_function, dual_subgradient, lagrangian, primal_objective
from .errors import (
    AlflbError,
    ConvergenceWarning,
    CorruptFileError,
    InfeasibleProblemError,
    InvalidInputError,
    RunFolderExistsError,
    SolverError,
    SolverUnavailableError,
    UnknownNameError,
)
from .metrics import imbalance_summary, max_violation
from .problem import AssignmentProblem, balanced_capacity, rounded_capacity
from .routing import biased_scores, expert_load, route_topk, routing_margin, topk_indices, topk_sum
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
from .traces import Trace, load_trace, save_trace

__version__ = "0.1.0"

__all__ = [
    "AlflbError",
    "AssignmentProblem",
    "Certificate",
    "ConvergenceWarning",
    "CorruptFileError",
    "InfeasibleProblemError",
    "InvalidInputError",
    "RuleState",
    "RuleUpdate",
    "RunFolderExistsError",
    "SimulationConfig",
    "SimulationResult",
    "SolveResult",
    "SolverError",
    "SolverUnavailableError",
    "SweepConfig",
    "SweepResult",
    "Trace",
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
