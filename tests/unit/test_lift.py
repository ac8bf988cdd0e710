"""User-level lift statistics against independent references on the same inputs: scipy's
Welch test, statsmodels' power and Holm, a bootstrap for the delta method, OLS for CUPED, and
simulated A/A experiments for the always-valid test's error rate under peeking."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower

from backend.ml.metrics import lift
from backend.ml.metrics.lift import MeanStat, RatioStat


def users(rng: np.random.Generator, n: int, rate: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Recommended items and watches per user: activity as skewed as MovieLens's (lognormal),
    watch-through varying per user (beta)."""
    shown = np.maximum(1, rng.lognormal(3.0, 1.0, n).round()).astype(float)
    p = rng.beta(2, 2 * (1 - rate) / rate, n)
    return rng.binomial(shown.astype(int), p).astype(float), shown


def test_mean_stat_matches_numpy():
    x = np.random.default_rng(1).gamma(2.0, 3.0, 500)
    s = MeanStat.of(x)
    assert s.n == 500 and s.mean == pytest.approx(x.mean())
    assert s.variance == pytest.approx(x.var(ddof=1))
    assert MeanStat.of([4.0]).variance == 0.0 and MeanStat.of([]).mean == 0.0


def test_fixed_horizon_absolute_is_welch_as_scipy_computes_it():
    rng = np.random.default_rng(2)
    a, b = rng.normal(3.5, 1.0, 300), rng.normal(3.7, 1.6, 200)
    got = lift.fixed_horizon(MeanStat.of(a), MeanStat.of(b), relative=False)
    ref = stats.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert got.estimate == pytest.approx(b.mean() - a.mean())
    assert (got.ci_low, got.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_a_figure_the_data_cannot_support_says_so():
    one = MeanStat.of([1.0])
    for result in (lift.fixed_horizon(one, one), lift.always_valid(one, one)):
        assert result.estimate is None and result.reason == "not enough data"
    assert lift.bayesian(one, one).chance_to_win is None
    zero = RatioStat.of([0, 0, 0], [1, 2, 3])
    assert lift.fixed_horizon(zero, zero).reason == "not enough data"  # relative to 0


def test_delta_method_variance_of_a_ratio_matches_a_bootstrap():
    rng = np.random.default_rng(3)
    watches, shown = users(rng, 2000)
    r = RatioStat.of(watches, shown)
    assert r.mean == pytest.approx(watches.sum() / shown.sum())
    idx = rng.integers(0, len(shown), (4000, len(shown)))
    boot = watches[idx].sum(axis=1) / shown[idx].sum(axis=1)
    assert r.variance / r.n == pytest.approx(boot.var(ddof=1), rel=0.08)


def test_relative_lift_variance_matches_a_bootstrap():
    rng = np.random.default_rng(4)
    (wa, sa), (wb, sb) = users(rng, 1500), users(rng, 1500, rate=0.22)
    got = lift.fixed_horizon(RatioStat.of(wa, sa), RatioStat.of(wb, sb), relative=True)
    ia, ib = rng.integers(0, 1500, (3000, 1500)), rng.integers(0, 1500, (3000, 1500))
    ra = wa[ia].sum(axis=1) / sa[ia].sum(axis=1)
    rb = wb[ib].sum(axis=1) / sb[ib].sum(axis=1)
    assert got.se ** 2 == pytest.approx(((rb - ra) / ra).var(ddof=1), rel=0.1)


def test_cuped_theta_is_the_pooled_ols_slope_and_keeps_the_estimate_unbiased():
    rng = np.random.default_rng(5)
    pre_a, pre_b = rng.gamma(2, 2, 800), rng.gamma(2, 2, 800)
    post_a = 1.0 + 0.8 * pre_a + rng.normal(0, 1, 800)
    post_b = 1.3 + 0.8 * pre_b + rng.normal(0, 1, 800)
    c, t = lift.cuped((post_a, pre_a), (post_b, pre_b))
    slope = np.polyfit(np.concatenate([pre_a, pre_b]), np.concatenate([post_a, post_b]), 1)[0]
    assert c.theta == pytest.approx(slope, rel=1e-9) and c.theta == t.theta  # pooled OLS
    plain = lift.fixed_horizon(MeanStat.of(post_a), MeanStat.of(post_b), relative=False)
    adjusted = lift.fixed_horizon(c, t, relative=False)
    assert adjusted.se < 0.5 * plain.se  # the covariate explains most of the variance
    assert adjusted.estimate == pytest.approx(0.3, abs=3 * adjusted.se)


def test_always_valid_interval_contains_the_fixed_one_and_is_read_safely_under_peeking():
    rng = np.random.default_rng(6)
    wa, sa = users(rng, 1000)
    wb, sb = users(rng, 1000)
    c, t = RatioStat.of(wa, sa), RatioStat.of(wb, sb)
    fixed, seq = lift.fixed_horizon(c, t), lift.always_valid(c, t)
    assert seq.ci_low < fixed.ci_low < fixed.ci_high < seq.ci_high
    assert seq.p_value >= fixed.p_value
    # A/A with a look after every 100 users per arm: the running p ever under alpha
    rejected = peeked_fixed = 0
    runs = 300
    for _ in range(runs):
        (wa, sa), (wb, sb) = users(rng, 2000), users(rng, 2000)
        looks = [(RatioStat.of(wa[:k], sa[:k]), RatioStat.of(wb[:k], sb[:k]))
                 for k in range(100, 2001, 100)]
        rejected += min(lift.always_valid(c, t).p_value for c, t in looks) < 0.05
        peeked_fixed += min(lift.fixed_horizon(c, t).p_value for c, t in looks) < 0.05
    assert rejected / runs <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / runs)
    assert peeked_fixed / runs > 0.12  # what peeking does to a fixed-horizon test


def test_running_min_keeps_the_smallest_so_far():
    assert lift.running_min([None, 0.5, 0.7, 0.2, 0.3]) == [None, 0.5, 0.5, 0.2, 0.2]


def test_bayesian_chance_to_win_and_risk_follow_the_normal_posterior():
    rng = np.random.default_rng(7)
    a, b = rng.normal(10, 2, 400), rng.normal(10.3, 2, 400)
    c, t = MeanStat.of(a), MeanStat.of(b)
    got = lift.bayesian(c, t, relative=False)
    mu, s = b.mean() - a.mean(), math.sqrt(a.var(ddof=1) / 400 + b.var(ddof=1) / 400)
    draws = rng.normal(mu, s, 400_000)  # Monte Carlo of the same posterior
    assert got.chance_to_win == pytest.approx((draws > 0).mean(), abs=0.003)
    assert got.risk_control == pytest.approx(np.maximum(draws, 0).mean(), rel=0.01)
    assert got.risk_treatment == pytest.approx(np.maximum(-draws, 0).mean(), rel=0.02)


def test_holm_matches_statsmodels():
    p = [0.01, 0.04, 0.03, 0.005, 0.2, 0.04]
    assert lift.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))


def test_sample_size_and_mde_match_statsmodels_power():
    var, mde = 0.04, 0.01
    n = lift.sample_size(var, mde, alpha=0.05, power=0.8)
    per_arm = NormalIndPower().solve_power(effect_size=mde / math.sqrt(var), alpha=0.05,
                                           power=0.8, ratio=1.0)
    assert n == math.ceil(2 * per_arm) or n == math.ceil(2 * per_arm) + 1
    assert lift.minimum_detectable_effect(var, n) == pytest.approx(mde, rel=1e-3)
    uneven = lift.sample_size(var, mde, share=0.25)
    per_control = NormalIndPower().solve_power(effect_size=mde / math.sqrt(var), alpha=0.05,
                                               power=0.8, ratio=1 / 3)
    assert uneven == pytest.approx(per_control * 4 / 3, rel=1e-3)
    assert lift.sample_size(var, 0.0) is None and lift.minimum_detectable_effect(var, 0) is None


def test_ratio_cuped_linearises_each_arm_around_its_own_ratio():
    rng = np.random.default_rng(4)
    # the arms show different numbers of items per user: a pooled linearisation is biased
    dc, dt = rng.integers(1, 6, 400).astype(float), rng.integers(3, 12, 400).astype(float)
    mc, mt = rng.binomial(dc.astype(int), 0.3), rng.binomial(dt.astype(int), 0.4)
    pre_c, pre_t = rng.poisson(3, 400).astype(float), rng.poisson(3, 400).astype(float)
    (pc, pt), (ac, at) = lift.ratio_cuped((mc, dc, pre_c), (mt, dt, pre_t))
    rc, rt = lift.RatioStat.of(mc, dc), lift.RatioStat.of(mt, dt)
    # unadjusted: the ratio and the delta method's variance, arm by arm
    assert (pc.mean, pt.mean) == pytest.approx((rc.mean, rt.mean))
    assert (pc.variance, pt.variance) == pytest.approx((rc.variance, rt.variance))
    # a covariate that carries nothing leaves the difference the ratios' difference
    (_, _), (zc, zt) = lift.ratio_cuped((mc, dc, np.zeros(400)), (mt, dt, np.zeros(400)))
    assert zt.mean - zc.mean == pytest.approx(rt.mean - rc.mean)
    # the adjusted difference is the plain one less theta x the covariate's difference
    assert at.mean - ac.mean == pytest.approx(
        (pt.mean - pc.mean) - ac.theta * (pre_t.mean() - pre_c.mean()))
