r"""Is regret logarithmic? A classifier that a constant step cannot pass.

Input: regret ``R_s(N_j)`` for seeds ``s`` at horizons ``N_j = N_0 2^j`` (doublings).

- **Increments per doubling** ``D_sj = R_s(N_{j+1}) - R_s(N_j)``: for
  ``R = a + b ln N`` they are constant (``b ln 2``); for ``R ~ N^e`` they grow by
  ``2^e`` per doubling. Reported: mean and 95% t-interval over seeds per doubling.
- **Trend of the increments** on the tail (the last ``n_tail`` doublings): per seed, the
  least-squares slope of ``D_sj`` against ``j``, divided by the mean tail increment
  (``rel_slope``: relative growth of the increment per doubling; 0 for ``ln N``,
  about ``2^e - 1`` for ``N^e``); 95% t-interval over seeds.
- **Free exponent** ``e`` of ``mean_s R`` against ``N`` on the tail horizons (log-log
  least squares), with a 95% seed-bootstrap interval. For ``ln N`` the local exponent is
  ``1 / ln N`` (about 0.1 at ``N = 2^14``), for ``sqrt N`` it is 0.5.

Verdict:

- ``"ln N"`` iff the increments are flat within their interval (the ``rel_slope``
  interval contains 0 and lies below ``FLAT_MAX = sqrt 2 - 1``, the relative growth of
  the increments of ``sqrt N``: growth that fast is excluded at 95%) **and** the exponent's upper limit is below 0.5;
- ``"growing"`` iff the increments grow (``rel_slope`` lower limit > 0) or the
  exponent's lower limit is at least 0.5;
- ``"inconclusive"`` otherwise (too few seeds or horizons to tell).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

# Flat: the increments of sqrt(N) grow by a factor sqrt(2) per doubling; flatness must
# exclude that (upper limit of the relative slope below sqrt(2) - 1) while including 0.
FLAT_MAX = 2**0.5 - 1
EXPONENT_MAX = 0.5  # the exponent of sqrt(N), which ln N must be shown to be below


@dataclass(frozen=True)
class Growth:
    verdict: str  # "ln N", "growing" or "inconclusive"
    horizons: list[int]
    increments_mean: list[float]  # per doubling
    increments_ci: list[tuple[float, float]]
    rel_slope: float
    rel_slope_ci: tuple[float, float]
    exponent: float
    exponent_ci: tuple[float, float]
    n_seeds: int
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        inc = ", ".join(f"{m:.3g}" for m in self.increments_mean)
        return (f"{self.verdict}: increments/doubling [{inc}], rel. slope {self.rel_slope:.3f} "
                f"[{self.rel_slope_ci[0]:.3f}, {self.rel_slope_ci[1]:.3f}], exponent "
                f"{self.exponent:.3f} [{self.exponent_ci[0]:.3f}, {self.exponent_ci[1]:.3f}], "
                f"{self.n_seeds} seeds")  # fmt: skip


def _t_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    n = len(x)
    m = float(np.mean(x))
    if n < 2:
        return (m, m)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * np.std(x, ddof=1) / np.sqrt(n))
    return (m - half, m + half)


def _exponent(horizons: np.ndarray, mean_r: np.ndarray) -> float:
    if np.any(mean_r <= 0):
        return float("nan")
    return float(np.polyfit(np.log(horizons), np.log(mean_r), 1)[0])


def classify(horizons_J, regret_SJ, n_tail: int | None = None, n_boot: int = 2000,
             seed: int = 0) -> Growth:  # fmt: skip
    """Classify the growth of ``regret_SJ`` (seeds x horizons, horizons doubling)."""
    n = np.asarray(horizons_J, dtype=np.float64)
    r = np.asarray(regret_SJ, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] != len(n) or len(n) < 4:
        raise ValueError(f"need (S, J) regret with J = len(horizons) >= 4, got {r.shape}")
    if not np.allclose(n[1:] / n[:-1], 2.0):
        raise ValueError("horizons must double")
    n_seeds = r.shape[0]
    inc = np.diff(r, axis=1)  # (S, J-1)
    n_tail = n_tail or max(3, inc.shape[1] // 2)
    tail = inc[:, -n_tail:]
    level = float(tail.mean())
    j = np.arange(n_tail, dtype=np.float64)
    slopes = np.polyfit(j, tail.T, 1)[0] / abs(level) if level != 0 else np.full(n_seeds, np.nan)
    rel = float(np.mean(slopes))
    rel_ci = _t_ci(slopes)
    tail_h = n[-(n_tail + 1):]
    expo = _exponent(tail_h, r[:, -(n_tail + 1):].mean(axis=0))
    rng = np.random.default_rng(seed)
    boots = np.array([_exponent(tail_h, r[rng.integers(n_seeds, size=n_seeds), -(n_tail + 1):]
                                .mean(axis=0)) for _ in range(n_boot)])  # fmt: skip
    boots = boots[np.isfinite(boots)]
    expo_ci = ((float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)))
               if len(boots) > n_boot // 2 else (float("nan"), float("nan")))  # fmt: skip
    flat = rel_ci[0] <= 0.0 <= rel_ci[1] and rel_ci[1] < FLAT_MAX
    if level > 0 and flat and expo_ci[1] < EXPONENT_MAX:
        verdict = "ln N"
    elif (level > 0 and rel_ci[0] > 0) or expo_ci[0] >= EXPONENT_MAX:
        verdict = "growing"
    else:
        verdict = "inconclusive"
    return Growth(verdict, [int(h) for h in n], [float(v) for v in inc.mean(axis=0)],
                  [_t_ci(inc[:, i]) for i in range(inc.shape[1])], rel, rel_ci, expo, expo_ci,
                  n_seeds)  # fmt: skip


def test_classifier_on_known_curves():
    rng = np.random.default_rng(0)
    n = 2.0 ** np.arange(4, 13)
    noise = rng.normal(size=(16, len(n))) * 0.3
    assert classify(n, 5 + 3 * np.log(n) + noise).verdict == "ln N"
    assert classify(n, np.sqrt(n) + noise).verdict == "growing"
    assert classify(n, 0.05 * n + 10 * np.log(n) + noise).verdict == "growing"
    assert classify(n, 0.3 * n ** 0.2 + noise).verdict != "ln N"
