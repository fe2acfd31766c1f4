r"""Is regret logarithmic? The classifier lives in :func:`alflb.regret.classify_growth`.

Input: regret ``R_s(N_j)`` for seeds ``s`` at horizons ``N_j = N_0 2^j`` (doublings);
the increments per doubling must be flat within their interval and the free exponent's
interval below 1/2 for the verdict ``"ln N"`` (see the function's docstring). ``classify``
and ``Growth`` are this module's names for it, kept for the checks that import them.
"""

from __future__ import annotations

import numpy as np

from alflb.regret import EXPONENT_MAX, FLAT_MAX, GrowthVerdict, classify_growth

__all__ = ["EXPONENT_MAX", "FLAT_MAX", "Growth", "classify"]

Growth = GrowthVerdict
classify = classify_growth


def test_classifier_on_known_curves():
    rng = np.random.default_rng(0)
    n = 2.0 ** np.arange(4, 13)
    noise = rng.normal(size=(16, len(n))) * 0.3
    assert classify(n, 5 + 3 * np.log(n) + noise).verdict == "ln N"
    assert classify(n, np.sqrt(n) + noise).verdict == "growing"
    assert classify(n, 0.05 * n + 10 * np.log(n) + noise).verdict == "growing"
    assert classify(n, 0.3 * n ** 0.2 + noise).verdict != "ln N"
