"""classify_growth decides; fit_growth describes and never says "log" for growing regret."""

from __future__ import annotations

import numpy as np
import pytest

from alflb.errors import InvalidInputError
from alflb.regret import classify_growth, fit_growth


def _constant_step(rng, n_seeds=8):
    """A constant step's regret on short horizons: a transient, then linear growth (steady-state error)."""
    n = 2.0 ** np.arange(3, 10)
    return n, 20 * (1 - np.exp(-n / 16)) + 0.02 * n + rng.normal(size=(n_seeds, len(n))) * 0.2


def test_a_constant_step_on_short_horizons_is_growing_not_log():
    n, R_SJ = _constant_step(np.random.default_rng(0))
    assert classify_growth(n, R_SJ).verdict == "growing"
    # the mutant: the descriptive fit of the mean curve alone labels it "log" (issue 12)
    assert fit_growth(n, R_SJ.mean(axis=0)).best == "log"
    fit = fit_growth(n, R_SJ)  # per-seed curves: the classifier runs and vetoes "log"
    assert fit.verdict == "growing" and fit.best in ("sqrt", "linear")
    np.testing.assert_allclose(fit.coefficients["log"], fit_growth(n, R_SJ.mean(axis=0)).coefficients["log"])


def test_a_logarithmic_curve_keeps_its_label_and_its_verdict():
    rng = np.random.default_rng(1)
    n = 2.0 ** np.arange(4, 13)
    R_SJ = 5 + 3 * np.log(n) + rng.normal(size=(16, len(n))) * 0.3
    fit = fit_growth(n, R_SJ)
    assert fit.verdict == "ln N" and fit.best == "log"
    assert fit_growth(n, R_SJ[0]).verdict is None  # one curve: no seed interval, no verdict


def test_classify_growth_refuses_bad_shapes():
    with pytest.raises(InvalidInputError, match="horizons must double"):
        classify_growth([1, 2, 3, 4], np.ones((2, 4)))
    with pytest.raises(InvalidInputError, match=r"need \(S, J\) regret with J = len\(horizons\) >= 4"):
        classify_growth([1, 2, 4], np.ones((2, 3)))
