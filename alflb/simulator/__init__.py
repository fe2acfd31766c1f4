r"""The online simulator: every balancing rule on the same score stream, with regret.

Shape legend: ``N`` steps, ``T`` tokens per step, ``E`` experts, ``K`` experts per token,
``S`` seeds, ``G`` prefix-grid points.

For each seed the stream is drawn once (common random numbers: every policy sees
identical scores) and each policy runs causally over it (:mod:`.loop`). For additive
rules the simulator also records the two terms of the Lagrangian identity T1 on batch
``n`` ([HZ]; docs/theory.md section 4):

.. math::

    f_n(p^{n+1}) - f_n(p^n) = \underbrace{\textstyle\sum_i b_i^{n+1}}_{\texttt{switching}}
        - \underbrace{\langle p^{n+1} - p^n,\, c - A^n \rangle}_{\texttt{imbalance}},

where ``imbalance`` equals :math:`\sum_k \varepsilon_k (A_k - c_k)^2` for every rule of the
form :math:`\Delta p = \varepsilon \odot (c - A)` (plus a constant shift, which
:math:`\sum_k c_k = \sum_k A_k` cancels), and ``switching`` :math:`\ge 0` is the gain of
re-routing batch ``n``'s tokens at the new bias. With the ``fixed`` stream this is T1
exactly. It costs one more routing pass per step (``record_t1=False`` skips it).

The package is cut by role, and data flows one way:

- :mod:`.spec`: :class:`PolicySpec` and :func:`parse_value` (the ``name:key=value`` form);
- :mod:`.policy`: the :class:`~.policy.Policy` protocol, its adapters of update rules
  (:func:`alflb.rules.make_rule`) and comparators (:mod:`alflb.comparators`), and the one
  registry :func:`~.policy.make_policy`;
- :mod:`.config`: :class:`SimulationConfig`;
- :mod:`.records`: :class:`PolicyRun` and :class:`SeedReference` (arrays);
- :mod:`.runfolder`: :class:`~.runfolder.RunFolder`, every file of a run folder;
- :mod:`.result`: :class:`SimulationResult` (regret by :mod:`alflb.regret`, metrics by
  :mod:`alflb.metrics`);
- :mod:`.loop`: the per-step loop, the exact references, :func:`run_policy`, :func:`simulate`.

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915.
.. [W] L. Wang et al., arXiv:2408.15664 (MaxVio).

Examples
--------
The per-batch optimum has zero dynamic regret; a causal rule pays some:

>>> cfg = SimulationConfig(policies=("sign:u=0.01", "batch_optimum"), n_steps=10, n_tokens=16,
...                        n_experts=4, k=1, n_seeds=1, progress=False)
>>> regrets = {lab: simulate(cfg).regret(lab)["dynamic_regret"] for lab in cfg.labels}
>>> regrets["sign_u=0.01"] > 1e-9 > abs(regrets["batch_optimum"])
True
"""

from .config import SimulationConfig
from .loop import run_policy, simulate
from .policy import Policy, make_policy, policy_names
from .records import PolicyRun, SeedReference
from .result import SimulationResult
from .runfolder import RunFolder
from .spec import PolicySpec, parse_value

__all__ = [
    "Policy",
    "PolicyRun",
    "PolicySpec",
    "RunFolder",
    "SeedReference",
    "SimulationConfig",
    "SimulationResult",
    "make_policy",
    "parse_value",
    "policy_names",
    "run_policy",
    "simulate",
]
