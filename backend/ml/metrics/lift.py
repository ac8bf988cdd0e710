"""User-level A/B statistics: per-arm summaries of users, and the lift of a treatment arm over
control read three ways (fixed-horizon, always-valid, Bayesian), with CUPED, Holm and sample
sizes.

The unit of analysis is the user, the unit the router randomises. A mean metric takes one value
per user (Welch on user means); a ratio metric such as watch-through (watches / recommended
items) takes a numerator and a denominator per user, and the variance of the ratio of sums is
the delta method's (Deng, Knoblich & Lu 2018, "Applying the Delta Method in Metric
Analytics"). Counting slots as independent trials instead lets heavy users dominate and makes
the variance too small. The formulas follow GrowthBook's engine (gbstats 0.8.0, see
tests/reference/README.md), which the unit tests run on the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import stats

Values = Sequence[float] | np.ndarray


class Stat(Protocol):
    """What a test needs of an arm: users, the metric's estimate, its per-user variance."""

    @property
    def n(self) -> int: ...
    @property
    def mean(self) -> float: ...
    @property
    def variance(self) -> float: ...
    @property
    def unadjusted_mean(self) -> float: ...


@dataclass(frozen=True)
class MeanStat:
    """Sufficient statistics of one value per user."""

    n: int
    sum: float
    sum_squares: float

    @classmethod
    def of(cls, values: Values) -> MeanStat:
        x = np.asarray(values, dtype=float)
        return cls(len(x), float(x.sum()), float((x * x).sum()))

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0

    @property
    def unadjusted_mean(self) -> float:
        return self.mean

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator); 0 below two users."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.sum_squares - self.sum ** 2 / self.n) / (self.n - 1))


@dataclass(frozen=True)
class RatioStat:
    """A ratio of sums over users, sum(m) / sum(d): its per-user delta-method variance is
    var(m)/mu_d^2 - 2 cov(m, d) mu_m/mu_d^3 + mu_m^2 var(d)/mu_d^4."""

    m: MeanStat
    d: MeanStat
    m_d_sum: float  # sum over users of m * d

    @classmethod
    def of(cls, numerator: Values, denominator: Values) -> RatioStat:
        m, d = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
        return cls(MeanStat.of(m), MeanStat.of(d), float((m * d).sum()))

    @property
    def n(self) -> int:
        return self.m.n

    @property
    def mean(self) -> float:
        return self.m.sum / self.d.sum if self.d.sum else 0.0

    @property
    def unadjusted_mean(self) -> float:
        return self.mean

    @property
    def covariance(self) -> float:
        return _covariance(self.n, self.m.sum, self.d.sum, self.m_d_sum)

    @property
    def variance(self) -> float:
        mm, md = self.m.mean, self.d.mean
        if md == 0:
            return 0.0
        return max(0.0, self.m.variance / md ** 2 - 2 * self.covariance * mm / md ** 3
                   + mm ** 2 * self.d.variance / md ** 4)


@dataclass(frozen=True)
class AdjustedStat:
    """CUPED (Deng, Xu, Kohavi & Walker 2013): the user's metric less theta times a
    pre-experiment covariate, theta pooled over both arms (`cuped`)."""

    post: MeanStat
    pre: MeanStat
    post_pre_sum: float
    theta: float

    @property
    def n(self) -> int:
        return self.post.n

    @property
    def mean(self) -> float:
        return self.post.mean - self.theta * self.pre.mean

    @property
    def unadjusted_mean(self) -> float:
        return self.post.mean

    @property
    def covariance(self) -> float:
        return _covariance(self.n, self.post.sum, self.pre.sum, self.post_pre_sum)

    @property
    def variance(self) -> float:
        return max(0.0, self.post.variance + self.theta ** 2 * self.pre.variance
                   - 2 * self.theta * self.covariance)


def _covariance(n: int, sx: float, sy: float, sxy: float) -> float:
    return (sxy - sx * sy / n) / (n - 1) if n > 1 else 0.0


def cuped(control: tuple[Values, Values], treatment: tuple[Values, Values]
          ) -> tuple[AdjustedStat, AdjustedStat]:
    """Both arms adjusted by one theta = cov(post, pre) / var(pre) over both arms' users
    together, the OLS slope (gbstats' `compute_theta`; 0 when either variance is 0, which
    leaves the metric unadjusted); (post, pre) per user."""
    parts = []
    for post, pre in (control, treatment):
        y, x = np.asarray(post, dtype=float), np.asarray(pre, dtype=float)
        parts.append((MeanStat.of(y), MeanStat.of(x), float((y * x).sum())))
    n = sum(p[0].n for p in parts)
    joint_post = MeanStat(n, sum(p[0].sum for p in parts),
                          sum(p[0].sum_squares for p in parts))
    joint_pre = MeanStat(n, sum(p[1].sum for p in parts), sum(p[1].sum_squares for p in parts))
    theta = 0.0
    if joint_pre.variance > 0 and joint_post.variance > 0:
        cov = _covariance(n, joint_post.sum, joint_pre.sum, sum(p[2] for p in parts))
        theta = cov / joint_pre.variance
    c, t = (AdjustedStat(post, pre, s, theta) for post, pre, s in parts)
    return c, t


def ratio_cuped(control: tuple[Values, Values, Values], treatment: tuple[Values, Values, Values]
                ) -> tuple[tuple[MeanStat, MeanStat], tuple[AdjustedStat, AdjustedStat]]:
    """CUPED for a ratio metric, (numerator, denominator, covariate) per user and arm: each
    arm's users linearised around the arm's own ratio R and mean denominator, R + (m - R d)
    / mean(d) (their mean is R, their variance the delta method's), then adjusted by one
    pooled theta (`cuped`). Linearising both arms around a pooled ratio would bias the
    difference whenever the arms' mean denominators differ. Returns the unadjusted and the
    adjusted statistics."""
    posts = []
    for m, d, _ in (control, treatment):
        m, d = np.asarray(m, dtype=float), np.asarray(d, dtype=float)
        ratio = m.sum() / d.sum() if d.sum() else 0.0
        posts.append(ratio + linearised(m, d, ratio))
    plain = (MeanStat.of(posts[0]), MeanStat.of(posts[1]))
    return plain, cuped((posts[0], control[2]), (posts[1], treatment[2]))


def linearised(numerator: Values, denominator: Values, ratio: float) -> np.ndarray:
    """Per-user values whose mean moves as the ratio metric does: (m - ratio * d) / mean(d)
    (the delta method's linearisation), so CUPED can adjust a ratio metric."""
    m, d = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    scale = d.mean() if len(d) and d.mean() else 1.0
    return np.asarray((m - ratio * d) / scale, dtype=float)


# -- the lift and its tests ----------------------------------------------------------------

class Lift(BaseModel):
    """Treatment less control, absolute or relative to control's mean; `p_value` two-sided.
    None throughout (and `reason`) where the data cannot support a figure."""

    model_config = ConfigDict(frozen=True)

    relative: bool
    estimate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    se: float | None = None
    reason: str | None = None


def _difference(c: Stat, t: Stat, relative: bool) -> tuple[float, float] | None:
    """The point estimate and the variance of the estimate, or None when undefined."""
    if c.n < 2 or t.n < 2:
        return None
    vc, vt = c.variance / c.n, t.variance / t.n
    if relative:
        base = c.unadjusted_mean
        if base == 0:
            return None
        point = (t.mean - c.mean) / base  # the variance takes unadjusted means, as gbstats
        var = vt / base ** 2 + vc * t.unadjusted_mean ** 2 / base ** 4
    else:
        point, var = t.mean - c.mean, vt + vc
    return (point, var) if var > 0 else None


def welch_df(c: Stat, t: Stat) -> float:
    """Welch-Satterthwaite degrees of freedom of the difference of two means."""
    vc, vt = c.variance / c.n, t.variance / t.n
    return (vc + vt) ** 2 / (vc ** 2 / (c.n - 1) + vt ** 2 / (t.n - 1))


def fixed_horizon(c: Stat, t: Stat, relative: bool = True, alpha: float = 0.05) -> Lift:
    """Welch's t-test and interval of the lift, for one reading at the planned sample size."""
    est = _difference(c, t, relative)
    if est is None:
        return Lift(relative=relative, reason="not enough data")
    point, var = est
    se, df = math.sqrt(var), welch_df(c, t)
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return Lift(relative=relative, estimate=point, ci_low=point - half, ci_high=point + half,
                p_value=float(2 * stats.t.sf(abs(point / se), df)), se=se)


def rho(alpha: float, tuning: float) -> float:
    """The mixture's scale that makes the interval narrowest at `tuning` total users (Howard,
    Ramdas, McAuliffe & Sekhon 2021, eq. 3.3; gbstats' `sequential_tuning_parameter`)."""
    return math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning)


def always_valid(c: Stat, t: Stat, relative: bool = True, alpha: float = 0.05,
                 tuning: float = 5000.0) -> Lift:
    """The asymptotic confidence sequence of the lift (Howard et al. 2021, as GrowthBook's
    sequential test) and its always-valid p-value: the mixture SPRT (Johari, Pekelis & Walsh
    2017) whose normal mixture has variance tau^2 = s^2 rho^2, s^2 the per-user variance.
    Computed from the experiment's start, it may be read after every user: the chance that it
    ever shows p < alpha under no difference stays at most alpha. For the running p-value
    over looks take the minimum of those read so far (`running_min`)."""
    est = _difference(c, t, relative)
    if est is None:
        return Lift(relative=relative, reason="not enough data")
    point, var = est
    n = c.n + t.n
    r2 = rho(alpha, tuning) ** 2
    s2 = var * n
    half = math.sqrt(s2) * math.sqrt(2 * (n * r2 + 1) / (n * n * r2)
                                     * math.log(math.sqrt(n * r2 + 1) / alpha))
    tau2 = s2 * r2
    log_lambda = (0.5 * math.log(var / (var + tau2))
                  + tau2 * point * point / (2 * var * (var + tau2)))
    p = math.exp(-log_lambda) if log_lambda > -700 else 1.0
    return Lift(relative=relative, estimate=point, ci_low=point - half, ci_high=point + half,
                p_value=min(1.0, p), se=math.sqrt(var))


def running_min(p_values: Sequence[float | None]) -> list[float | None]:
    """The always-valid p-value along looks: the smallest so far (None until the first)."""
    out: list[float | None] = []
    best: float | None = None
    for p in p_values:
        if p is not None:
            best = p if best is None else min(best, p)
        out.append(best)
    return out


class Bayes(BaseModel):
    """The posterior of the lift under a flat prior: the chance the treatment beats control,
    and the expected loss of choosing each (what GrowthBook calls risk)."""

    model_config = ConfigDict(frozen=True)

    chance_to_win: float | None = None
    risk_control: float | None = None
    risk_treatment: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    reason: str | None = None


def bayesian(c: Stat, t: Stat, relative: bool = True, interval: float = 0.95) -> Bayes:
    """Lift ~ N(estimate, se^2) (the normal approximation with a flat prior, as gbstats'
    effect test with an improper prior): P(lift > 0) = Phi(estimate / se); expected loss of
    keeping control E[max(lift, 0)], of shipping the treatment E[max(-lift, 0)], where
    E[max(X, 0)] = mu Phi(mu/s) + s phi(mu/s) for X ~ N(mu, s^2)."""
    est = _difference(c, t, relative)
    if est is None:
        return Bayes(reason="not enough data")
    mu, var = est
    s = math.sqrt(var)
    z = mu / s
    gain = mu * float(stats.norm.cdf(z)) + s * float(stats.norm.pdf(z))
    half = float(stats.norm.ppf(0.5 + interval / 2)) * s
    return Bayes(chance_to_win=float(stats.norm.cdf(z)), risk_control=gain,
                 risk_treatment=gain - mu, ci_low=mu - half, ci_high=mu + half)


# -- many tests, and planning --------------------------------------------------------------

def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979): the k-th smallest p times (m - k + 1),
    made monotone; reject those under alpha to keep the family-wise error at alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def sample_size(variance: float, mde: float, alpha: float = 0.05, power: float = 0.8,
                share: float = 0.5) -> int | None:
    """Users needed in total to detect an absolute lift `mde` of a metric with per-user
    `variance`, two-sided, with `share` of users in the treatment arm (normal approximation:
    n = (z_{1-alpha/2} + z_power)^2 var (1/share + 1/(1-share)) / mde^2)."""
    if mde <= 0 or variance <= 0 or not 0 < share < 1:
        return None
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    return math.ceil(z * z * variance * (1 / share + 1 / (1 - share)) / mde ** 2)


def minimum_detectable_effect(variance: float, users: int, alpha: float = 0.05,
                              power: float = 0.8, share: float = 0.5) -> float | None:
    """The absolute lift `users` in total detect with `power` (inverse of `sample_size`)."""
    if users <= 0 or variance <= 0 or not 0 < share < 1:
        return None
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    return z * math.sqrt(variance * (1 / share + 1 / (1 - share)) / users)
