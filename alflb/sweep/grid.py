r"""A sweep's grid: a base simulation config, grid values and root seeds, expanded into runs.

Shape legend: ``P`` grid points, ``S`` seeds, ``R = P * S`` runs.

A :class:`SweepConfig` expands, deterministically, into the Cartesian product

.. math::

    \mathcal{R} = \Big(\prod_{j=1}^{J} V_j\Big) \times \{s_1, \dots, s_S\},

the first grid field varying slowest and the seed fastest. Each element is one
:class:`SweepRun`: the base config with the grid values set and ``seed = s``,
``n_seeds = 1``.

**Run ids.** ``<slug>-<hash>-s<seed>``: the slug lists the grid values
(``n_tokens=256_u=0.001``, keys sorted, clipped to 64 characters), the hash is the first
10 hex digits of the SHA-256 of the grid point's whole resolved config (canonical JSON,
sorted keys, without the seed). Ids depend only on the parameter values, not on the order
the grid was written in nor on the machine; changing any base field gives new ids, so a
resumed sweep never mixes runs of different configs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import AlflbError, InvalidInputError
from ..runio import json_default
from ..simulator import SimulationConfig, parse_value
from ..simulator.spec import format_value

__all__ = ["SweepConfig", "SweepRun", "canonical_json", "parse_grid"]

# Grid fields that the sweep itself sets, with the reason given in the error.
_RESERVED = {
    "seed": "seeds come from SweepConfig.seeds",
    "n_seeds": "seeds come from SweepConfig.seeds (each run is one seed)",
    "progress": "progress is presentation, not part of a run",
    "policies": "every policy is a row of the summary: list them in the base config",
    "stream_params": "set one stream parameter per grid field: 'stream_params.<name>'",
}
_STREAM_PARAM = "stream_params."
_SLUG_BAD = re.compile(r"[^A-Za-z0-9_.=+-]+")
_SLUG_MAX = 64
_HASH_LEN = 10
_MAX_RUNS = 100_000  # a sweep of more runs is a typo (seeds=1e9), not an experiment


# --------------------------------------------------------------------------- grid specs
def parse_grid(texts: Sequence[str]) -> dict[str, list[Any]]:
    """Read command-line grid specifications ``field=v1,v2,...`` into a grid dict.

    Values are read like policy parameters: ``true``/``false``, ``none``, integers,
    floats, else strings.

    >>> parse_grid(["n_tokens=256,512", "u=0.001,1e-2", "stream=gaussian,skewed"])
    {'n_tokens': [256, 512], 'u': [0.001, 0.01], 'stream': ['gaussian', 'skewed']}
    """
    if isinstance(texts, str):
        texts = [texts]
    grid: dict[str, list[Any]] = {}
    for text in texts:
        if not isinstance(text, str) or "=" not in text:
            raise InvalidInputError(f"grid specification {text!r}: expected FIELD=V1,V2,...")
        key, _, rest = text.partition("=")
        key = key.strip()
        if not key:
            raise InvalidInputError(f"grid specification {text!r} has no field name")
        values = [v.strip() for v in rest.split(",")]
        if not rest.strip() or any(not v for v in values):
            raise InvalidInputError(f"grid specification {text!r} has an empty value")
        if key in grid:
            raise InvalidInputError(f"grid field {key!r} given twice")
        grid[key] = [parse_value(v) for v in values]
    return grid


def canonical_json(obj: Any) -> str:
    """Sorted-key, compact JSON: the text that run ids hash and ``done.json`` configs compare."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=json_default)


def _config_for(base: SimulationConfig, values: Mapping[str, Any], seed: int) -> SimulationConfig:
    d = base.as_dict()
    params = dict(d["stream_params"])
    for key, value in values.items():
        if key.startswith(_STREAM_PARAM):
            params[key[len(_STREAM_PARAM):]] = value
        else:
            d[key] = value
    d["stream_params"] = params
    d["seed"], d["n_seeds"] = seed, 1
    return dataclasses.replace(SimulationConfig.from_dict(d), progress=False)


def _resolved_value(config: SimulationConfig, key: str) -> Any:
    if key.startswith(_STREAM_PARAM):
        return config.stream_params[key[len(_STREAM_PARAM):]]
    return getattr(config, key)


# --------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: a grid point simulated with one root seed.

    Attributes
    ----------
    run_id : str
        ``<point_id>-s<seed>``; the run's folder is ``out/runs/<run_id>``.
    point_id : str
        ``<slug>-<hash>``: the grid point (shared by its seeds).
    seed : int
        The root seed (``config.seed``; ``config.n_seeds == 1``).
    values : dict
        The grid values of the point, resolved by the config (e.g. ``u`` as a float).
    config : SimulationConfig
        What :func:`~alflb.simulator.simulate` runs.
    """

    run_id: str
    point_id: str
    seed: int
    values: dict[str, Any]
    config: SimulationConfig


def _point_id(config: SimulationConfig, values: Mapping[str, Any]) -> str:
    d = config.as_dict()
    d.pop("seed")
    d.pop("n_seeds")
    digest = hashlib.sha256(canonical_json(d).encode()).hexdigest()[:_HASH_LEN]
    slug = "_".join(f"{k}={format_value(values[k])}" for k in sorted(values)) or "base"
    slug = _SLUG_BAD.sub("-", slug)[:_SLUG_MAX].rstrip("-_") or "point"
    return f"{slug}-{digest}"


def _check_seeds(seeds: Any, base: SimulationConfig) -> tuple[int, ...]:
    if seeds is None:
        if base.n_seeds > _MAX_RUNS:
            raise InvalidInputError(f"n_seeds must be at most {_MAX_RUNS} in a sweep, got {base.n_seeds}")
        return tuple(range(base.seed, base.seed + base.n_seeds))
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise InvalidInputError(f"seeds must be >= 1 (a count) or a list of seeds, got {seeds!r}")
        if seeds > _MAX_RUNS:
            raise InvalidInputError(f"seeds must be at most {_MAX_RUNS}, got {seeds!r}")
        return tuple(range(int(seeds)))
    if isinstance(seeds, (str, bytes, Mapping)) or not isinstance(seeds, Sequence):
        raise InvalidInputError(f"seeds must be a count or a list of non-negative integers, got {seeds!r}")
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise InvalidInputError(f"seeds must be non-negative integers, got {s!r}")
        out.append(int(s))
    if not out:
        raise InvalidInputError("seeds is empty: give at least one seed")
    if len(set(out)) != len(out):
        raise InvalidInputError(f"seeds repeat: {sorted({s for s in out if out.count(s) > 1})}")
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A sweep: a base simulation config, a grid over its fields, and root seeds.

    The runs are the product of the grid values (first field slowest) times the seeds;
    see the module docstring for ids, randomness and resume.

    Parameters
    ----------
    base : SimulationConfig or dict
        Every field that the grid does not set. Its ``seed`` and ``n_seeds`` are used
        only when ``seeds`` is ``None``.
    grid : dict of str -> list
        ``field -> values``. A field is a :class:`~alflb.simulator.SimulationConfig`
        field other than ``seed``, ``n_seeds``, ``progress``, ``policies`` and
        ``stream_params``, or ``"stream_params.<name>"`` for one stream parameter. Each
        value list is non-empty; every grid point must be a valid config and points must
        be distinct. An empty grid is one point, the base.
    seeds : int, list of int, or None
        Root seeds: an int ``S`` means ``0..S-1``; ``None`` means
        ``base.seed .. base.seed + base.n_seeds - 1``.

    Examples
    --------
    >>> sweep = SweepConfig(grid={"u": [1e-3, 1e-2], "stream": ["gaussian", "skewed"]}, seeds=[7])
    >>> [r.run_id.split("-")[0] for r in sweep.runs]
    ['stream=gaussian_u=0.001', 'stream=skewed_u=0.001', 'stream=gaussian_u=0.01', 'stream=skewed_u=0.01']
    """

    base: SimulationConfig = field(default_factory=SimulationConfig)  # fields not in the grid
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # field -> values
    seeds: Any = None  # count, list of root seeds, or None (from base)
    _runs: tuple[SweepRun, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        base = self.base
        if isinstance(base, Mapping):
            base = SimulationConfig.from_dict(dict(base))
        if not isinstance(base, SimulationConfig):
            raise InvalidInputError(f"base must be a SimulationConfig or a dict, got {type(base).__name__}")
        object.__setattr__(self, "base", base)
        if not isinstance(self.grid, Mapping):
            raise InvalidInputError(f"grid must be a dict of field -> list of values, got {self.grid!r}")
        fields = {f.name for f in dataclasses.fields(SimulationConfig)}
        grid: dict[str, tuple[Any, ...]] = {}
        for key, values in self.grid.items():
            if not isinstance(key, str):
                raise InvalidInputError(f"grid field names must be strings, got {key!r}")
            if key in _RESERVED:
                raise InvalidInputError(f"grid field {key!r} is not allowed: {_RESERVED[key]}")
            if key.startswith(_STREAM_PARAM):
                if not key[len(_STREAM_PARAM):]:
                    raise InvalidInputError(f"grid field {key!r} names no stream parameter")
            elif key not in fields:
                allowed = sorted(fields - set(_RESERVED))
                raise InvalidInputError(
                    f"unknown grid field {key!r}; fields: {', '.join(allowed)}, or stream_params.<name>"
                )
            if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
                raise InvalidInputError(f"grid values of {key!r} must be a list, got {values!r}")
            if len(values) == 0:
                raise InvalidInputError(f"grid field {key!r} has no values")
            grid[key] = tuple(values)
        object.__setattr__(self, "grid", grid)
        seeds = _check_seeds(self.seeds, base)
        n_runs = len(seeds)
        for values in grid.values():
            n_runs *= len(values)
        if n_runs > _MAX_RUNS:
            raise InvalidInputError(
                f"the sweep has {n_runs} runs ({n_runs // len(seeds)} grid points x {len(seeds)} "
                f"seeds), more than {_MAX_RUNS}: use fewer seeds or grid values"
            )
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "_runs", self._expand())

    def _expand(self) -> tuple[SweepRun, ...]:
        keys = list(self.grid)
        runs: list[SweepRun] = []
        seen: dict[str, dict[str, Any]] = {}
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            raw = dict(zip(keys, combo, strict=True))
            try:
                first = _config_for(self.base, raw, self.seeds[0])
            except AlflbError as exc:
                point = ", ".join(f"{k}={v!r}" for k, v in raw.items())
                raise type(exc)(f"grid point {point}: {exc}") from None
            values = {k: _resolved_value(first, k) for k in keys}
            point_id = _point_id(first, values)
            if point_id in seen:
                raise InvalidInputError(
                    f"grid points {seen[point_id]} and {raw} give the same config: "
                    "the grid repeats a value"
                )
            seen[point_id] = raw
            for seed in self.seeds:
                config = first if seed == self.seeds[0] else dataclasses.replace(first, seed=seed)
                runs.append(SweepRun(f"{point_id}-s{seed}", point_id, seed, values, config))
        return tuple(runs)

    @property
    def runs(self) -> tuple[SweepRun, ...]:
        """Every run, grid points in product order (first field slowest), seeds fastest."""
        return self._runs

    @property
    def points(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        """``(point_id, values)`` of every grid point, in order."""
        out: dict[str, dict[str, Any]] = {}
        for run in self._runs:
            out.setdefault(run.point_id, run.values)
        return tuple(out.items())

    def as_dict(self) -> dict[str, Any]:
        return {
            "base": self.base.as_dict(),
            "grid": {k: list(v) for k, v in self.grid.items()},
            "seeds": list(self.seeds),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepConfig:
        unknown = set(d) - {"base", "grid", "seeds"}
        if unknown:
            raise InvalidInputError(f"unknown sweep config fields {sorted(unknown)}")
        return cls(base=dict(d.get("base") or {}), grid=dict(d.get("grid") or {}), seeds=d.get("seeds"))
