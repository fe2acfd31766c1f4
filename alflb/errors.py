"""The errors and warnings that alflb raises.

Every public entry point validates its input and raises one of these classes, with a
message that names the offending value. They subclass the builtin exception a user
would catch anyway (``ValueError``, ``ImportError``, ``RuntimeError``), so existing
``except ValueError`` blocks keep working.
"""

from __future__ import annotations

__all__ = [
    "AlflbError",
    "ConvergenceWarning",
    "CorruptFileError",
    "InfeasibleProblemError",
    "InvalidInputError",
    "RoutingTieWarning",
    "RunFolderExistsError",
    "SolverError",
    "SolverUnavailableError",
    "SweepFailedError",
    "UnknownNameError",
]


class AlflbError(Exception):
    """Base class of every error raised on purpose by alflb."""


class InvalidInputError(AlflbError, ValueError):
    """An argument has the wrong shape, type, range or contains NaN/inf."""


class InfeasibleProblemError(InvalidInputError):
    """The assignment problem as posed has no feasible point (e.g. ``K*T/E`` is not an integer)."""


class UnknownNameError(AlflbError, ValueError):
    """A solver, rule, stream or preset name that is not registered."""


class SolverUnavailableError(AlflbError, ImportError):
    """A solver backend whose package is not installed."""


class SolverError(AlflbError, RuntimeError):
    """A solver backend failed, or returned an answer that fails its certificate."""


class CorruptFileError(AlflbError, ValueError):
    """A trace, result or checkpoint file that is truncated, tampered with or of the wrong version."""


class RunFolderExistsError(AlflbError, FileExistsError):
    """A run folder already holds results and neither resume nor overwrite was asked for."""


class ConvergenceWarning(UserWarning):
    """An iterative method stopped before reaching its tolerance."""


class SweepFailedError(AlflbError, RuntimeError):
    """Some runs of a sweep failed (raised on request by ``SweepResult.raise_on_failure``)."""


class RoutingTieWarning(UserWarning):
    """An optimal bias whose top-K routing cannot reproduce the optimal assignment: some
    token's weakest routed and strongest unrouted biased scores are tied (margin zero), so
    greedy routing with the bias may miss the capacities."""

