"""Per-arm intervals, the sample-ratio check, and the slot-level two-proportion z-test that
the user-level tests of lift.py replaced (bench/abtest.py prints its error rate beside theirs).

Each function returns plain floats; the tests compare them with scipy.stats on the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def proportion_ci(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson 1927; what statsmodels'
    proportion_confint(method="wilson") gives)."""
    if trials == 0:
        return (0.0, 1.0)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (centre - half, centre + half)


def two_proportion_z(s1: int, n1: int, s2: int, n2: int) -> dict[str, float]:
    """Pooled two-proportion z-test of p1 = p2, two-sided: z = (p1 - p2) / sqrt(p(1-p)
    (1/n1 + 1/n2)) with p the pooled rate. Also the 95% Wald interval of p1 - p2."""
    if n1 == 0 or n2 == 0:
        return {"diff": 0.0, "z": 0.0, "p_value": 1.0, "ci_low": 0.0, "ci_high": 0.0}
    p1, p2 = s1 / n1, s2 / n2
    pooled = (s1 + s2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (p1 - p2) / se0 if se0 > 0 else 0.0
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    half = 1.959963984540054 * se
    return {"diff": p1 - p2, "z": z, "p_value": float(2 * stats.norm.sf(abs(z))),
            "ci_low": p1 - p2 - half, "ci_high": p1 - p2 + half}


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of a mean."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (float("nan"), float("nan"))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)) * x.std(ddof=1) / math.sqrt(
        len(x))
    return (float(x.mean() - half), float(x.mean() + half))


def sample_ratio_mismatch(observed: Sequence[int], expected_shares: Sequence[float],
                          alpha: float = 0.001) -> dict[str, float | bool]:
    """Chi-square goodness of fit of the units per arm against the configured split
    (Fabijan et al. 2019, "Diagnosing Sample Ratio Mismatch"); mismatch when p < `alpha`
    (the customary 0.001, because a false SRM alarm stops an experiment)."""
    obs = np.asarray(observed, dtype=float)
    total = obs.sum()
    if total == 0:
        return {"chi2": 0.0, "p_value": 1.0, "mismatch": False}
    exp = np.asarray(expected_shares, dtype=float)
    exp = exp / exp.sum() * total
    if (obs[exp == 0] > 0).any():  # units in an arm that should get none: broken outright
        return {"chi2": float("inf"), "p_value": 0.0, "mismatch": True}
    live = exp > 0
    if live.sum() < 2:  # one arm expected: nothing to compare
        return {"chi2": 0.0, "p_value": 1.0, "mismatch": False}
    chi2 = float(((obs[live] - exp[live]) ** 2 / exp[live]).sum())
    p = float(stats.chi2.sf(chi2, int(live.sum()) - 1))
    return {"chi2": chi2, "p_value": p, "mismatch": p < alpha}
