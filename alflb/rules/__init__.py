r"""The ALF-LB update family: pure bias-update rules (docs/theory.md section 3).

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

Sign convention (used everywhere in alflb): the router *adds* the bias to the scores for
selection, ``gamma + p``; an overloaded expert's bias goes *down*. The bias is the dual
variable ``p`` of the expert-capacity constraints [HZ]. Every additive rule is one dual
(sub)gradient step

.. math::

    p_k \leftarrow p_k + \varepsilon_k^n \, (c_k - A_k^n), \qquad \varepsilon_k^n \ge 0,

where ``A^n`` are the loads of the batch just routed with ``p`` and ``c`` the capacities
(balanced: ``c_k = L = K T / E``). The rules:

==================  =========================================================================
``none``            no change.
``sign``            :math:`p \mathrel{+}= u\,\mathrm{sign}(c - A)`, i.e.
                    :math:`\varepsilon_k = u / |c_k - A_k|` (0 when equal) [W], [V3].
``per_expert``      :math:`p \mathrel{+}= \varepsilon \odot (c - A)` with user steps ``eps_E``.
``uniform``         :math:`p \mathrel{+}= \varepsilon\,(c - A)/\bar L`, :math:`\bar L = \sum_k c_k / E`
                    (the error as a fraction of the mean load; ``normalize=False`` uses raw
                    counts). Alias ``proportional`` ([W] Table 3).
``decay``           the same with :math:`\varepsilon_n = a/(n + n_0)`; ``a = 1/mu``,
                    ``n0 = 1``, ``normalize=False`` is the ``1/(mu n)`` schedule of the
                    logarithmic-regret theorem [HZ], [HAK].
``centred``         sign step, then subtract its mean (torchtitan, Moonlight). Alias
                    ``centered``. Routing is the same as ``sign``; the bias does not drift.
``multiplicative``  select top-K of :math:`\gamma \odot b`, ``b`` starts at 1,
                    :math:`b \leftarrow b\,(1 + u\,\mathrm{sign}(c - A))` [W].
``frozen_tail``     a base rule for ``freeze_after`` updates, then no change [V3].
``momentum``        SMEBU-like: :math:`e = (c - A)/\bar L`,
                    :math:`v \leftarrow \beta v + (1-\beta) e`,
                    :math:`\Delta = u \tanh(v/\tau)`, then :math:`\Delta - \mathrm{mean}(\Delta)`.
``quantile``        exact per-batch block-coordinate dual step (Megatron's quantile
                    balancing, Su 2026); no step size.
==================  =========================================================================

Newer rules (docs/theory.md section 3):

- ``histogram_quantile``: the quantile step estimated from per-expert histograms summed
  over micro-batches and data-parallel ranks (Kimi K3).
- ``smebu``: :math:`v \leftarrow \beta v + (1-\beta)\tanh(e/s)`, :math:`p \mathrel{+}= u v`,
  centred (Arcee Trinity; the clamp before the momentum).
- ``ema_proportional``: :math:`p \mathrel{+}= u\,(c/\textstyle\sum c - \hat f)` on an EMA of
  load fractions, centred, capped (axolotl).
- ``mirror``: entropic mirror step :math:`p \mathrel{+}= u \log(q / \hat f)` on an EMA of load
  fractions, centred (phi-balancing style). Alias ``phi``.
- ``bip``: a few exact dual iterations per batch on the capacity-inequality dual (BIP).

The package is cut by family: :mod:`~alflb.rules.base` (state, result, capabilities,
base class), :mod:`~alflb.rules.sign`, :mod:`~alflb.rules.proportional`,
:mod:`~alflb.rules.momentum`, :mod:`~alflb.rules.multiplicative`,
:mod:`~alflb.rules.quantile` and :mod:`~alflb.rules.registry` (names and aliases).
Each rule declares its capabilities on its class (:class:`RuleCapabilities`: selection
mode, step parameter, whether it reads scores, the state it keeps).

Every rule is a frozen dataclass with the same interface: :meth:`UpdateRule.initial_bias`,
:meth:`UpdateRule.init_state`, :meth:`UpdateRule.selection_scores` and
:meth:`UpdateRule.update`, which is *pure* (inputs are never modified) and returns a
:class:`RuleUpdate`. Numpy inputs give float64 numpy outputs; a torch bias gives torch
outputs of the bias's dtype and device (loads and capacities are converted to it).

The ``step_E`` of a :class:`RuleUpdate` is the per-expert :math:`\varepsilon_k` with
``new_bias = bias + step_E * (c - A) + t * 1`` for a scalar ``t``; ``t = 0`` for every rule
except ``centred`` (whose shift changes neither routing nor, since
:math:`\sum_k c_k = K T`, the Lagrangian), and ``step_E`` is ``None`` for rules not of this
form (``multiplicative``, ``momentum``, ``quantile``). The theory checks of
``proofs_check`` consume it.

References
----------
.. [HZ] X.Y. Han, Y. Zhong, A Theoretical Framework for Auxiliary-Loss-Free Load Balancing
   of Sparse Mixture-of-Experts in Large-Scale AI Models, arXiv:2512.03915.
.. [W] L. Wang et al., Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts,
   arXiv:2408.15664, Algorithm 1 and Table 3-4.
.. [V3] DeepSeek-AI, DeepSeek-V3 Technical Report, arXiv:2412.19437, section 2.1.2.
.. [HAK] E. Hazan, A. Agarwal, S. Kale, Logarithmic regret algorithms for online convex
   optimization, Machine Learning 69 (2007).
.. [Su] J. Su, quantile balancing (2026), as implemented in Megatron-core's router.

Examples
--------
>>> import numpy as np
>>> rule = make_rule("sign", u=0.1)
>>> out = rule.update(np.zeros(3), load_E=[3, 1, 2], capacity_E=[2, 2, 2],
...                   state=rule.init_state(3))
>>> out.bias_E.tolist(), out.step_E.tolist(), out.state.n_updates
([-0.1, 0.1, 0.0], [0.1, 0.1, 0.0], 1)
"""

from __future__ import annotations

from .base import CentredStepRule, RuleCapabilities, RuleState, RuleUpdate, UpdateRule
from .bip import BipRule
from .ema import EmaProportionalRule, MirrorRule, SmebuRule
from .histogram import HistogramAccumulator, HistogramQuantileRule, histogram_quantiles
from .momentum import MomentumRule
from .multiplicative import MultiplicativeRule
from .proportional import DecayRule, PerExpertRule, UniformRule
from .quantile import QuantileRule, quantile_sweep
from .registry import available_rules, make_rule, rule_from_dict
from .sign import CentredSignRule, FrozenTailRule, NoUpdateRule, SignRule

__all__ = [
    "BipRule",
    "CentredSignRule",
    "CentredStepRule",
    "DecayRule",
    "EmaProportionalRule",
    "FrozenTailRule",
    "HistogramAccumulator",
    "HistogramQuantileRule",
    "MirrorRule",
    "MomentumRule",
    "MultiplicativeRule",
    "NoUpdateRule",
    "PerExpertRule",
    "QuantileRule",
    "RuleCapabilities",
    "RuleState",
    "RuleUpdate",
    "SignRule",
    "SmebuRule",
    "UniformRule",
    "UpdateRule",
    "available_rules",
    "histogram_quantiles",
    "make_rule",
    "quantile_sweep",
    "rule_from_dict",
]
