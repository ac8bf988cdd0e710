"""A/B statistics: fixed-horizon tests, a sample-ratio check and an always-valid p-value.

Each function returns plain floats so snapshots serialise as JSON; the tests compare them with
scipy.stats on the same inputs.
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


def welch_t(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Welch's unequal-variance t-test of mean(a) = mean(b), two-sided, with the
    Welch-Satterthwaite degrees of freedom and the 95% interval of the difference."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        return {"diff": 0.0, "t": 0.0, "df": 0.0, "p_value": 1.0, "ci_low": 0.0,
                "ci_high": 0.0}
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    diff = float(x.mean() - y.mean())
    se = math.sqrt(vx + vy)
    if se == 0:
        return {"diff": diff, "t": 0.0, "df": 0.0, "p_value": 1.0, "ci_low": diff,
                "ci_high": diff}
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    t = diff / se
    half = float(stats.t.ppf(0.975, df)) * se
    return {"diff": diff, "t": t, "df": df, "p_value": float(2 * stats.t.sf(abs(t), df)),
            "ci_low": diff - half, "ci_high": diff + half}


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
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    p = float(stats.chi2.sf(chi2, len(obs) - 1))
    return {"chi2": chi2, "p_value": p, "mismatch": p < alpha}


def msprt_p_values(diffs: Sequence[float], variances: Sequence[float],
                   tau2: float = 1e-3) -> list[float]:
    """Always-valid p-values of H0: difference = 0 along a sequence of looks (Johari, Pekelis
    & Walsh 2017, mixture SPRT with a N(0, tau2) mixing distribution): at look n with
    estimate d_n and its variance V_n, Lambda_n = sqrt(V_n / (V_n + tau2)) x
    exp(tau2 d_n^2 / (2 V_n (V_n + tau2))); p_n = min(p_{n-1}, 1 / Lambda_n). Reading it at
    any time keeps the false-positive rate at alpha, unlike a repeatedly peeked t-test."""
    out, p = [], 1.0
    for d, v in zip(diffs, variances, strict=True):
        if v > 0:
            log_lam = 0.5 * math.log(v / (v + tau2)) + tau2 * d * d / (2 * v * (v + tau2))
            p = min(p, math.exp(-log_lam) if log_lam < 700 else 0.0)
        out.append(min(p, 1.0))
    return out
