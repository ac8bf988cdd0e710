"""Experiment section: per-arm figures over users, the user-level tests of B against A, the
sample-ratio check against the split in force, and the verdict."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from backend.analytics import experiment
from backend.analytics.snapshot import (
    Fairness,
    LiftTest,
    MaxRequirement,
    MinRequirement,
    Requirements,
    SampleRatio,
    Sequential,
)
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics import lift
from tests.unit.analytics_cases import ratings, reco_log, watches, window

CFG = AnalyticsSettings(alpha=0.05)


def fair(passes: bool = True) -> Fairness:
    return Fairness(coverage=0.9, gini=0.1, top10_share=0.1, exposure_gini=0.1, diversity=None,
                    diversity_by_segment={}, parity_gap={}, requirements=Requirements(
                        coverage=MinRequirement(value=0.9, min=0.8, passed=passes),
                        parity=MaxRequirement(value=0.0, max=0.15, passed=True)))


def test_arms_count_each_user_once_and_leave_out_users_two_arms_served():
    reco = reco_log([(50, 1, "B", [4]),  # user 1: moved to A since (a split change)
                     (10, 1, "A", [1, 2]), (20, 3, "A", [3, 4]), (25, 4, "A", [5]),
                     (15, 2, "B", [4, 5, 6])])
    watch = watches([(5, 1, 1), (4, 1, 2), (5, 2, 4), (70, 2, 5),  # 70: before the window
                     (30, 3, 9), (10, 3, 3), (20, 4, 5)])  # 30: before user 3's first
    rating = ratings([(5, 1, 1, 4), (4, 1, 2, 5), (5, 2, 4, 3), (8, 3, 3, 2), (9, 4, 5, 4)])
    out = experiment.compute(CFG, 0.5, reco, window(reco, watch, rating),
                             {"A": fair(), "B": fair()})
    a, b = out.arms["A"], out.arms["B"]
    # A: users 3 and 4 (2 and 1 items, 1 and 1 watches); B: user 2; user 1 in neither
    assert (a.requests, a.users, a.recommended_items, a.watches) == (3, 2, 3, 2)
    assert (b.requests, b.users, b.recommended_items, b.watches) == (2, 1, 3, 1)
    assert a.watch_through == pytest.approx(2 / 3) and b.watch_through == pytest.approx(1 / 3)
    r = lift.RatioStat.of([1, 1], [2, 1])  # A's users: (watches, shown)
    half = 1.959963984540054 * (r.variance / 2) ** 0.5
    assert a.watch_through_ci == pytest.approx((2 / 3 - half, 2 / 3 + half))
    assert b.watch_through_ci == (None, None)  # one user: no interval
    assert a.mean_rating == 3.0 and a.ratings == 2
    assert a.mean_rating_ci == pytest.approx(stats.t.interval(0.95, 1, 3.0, 1.0))
    assert out.srm is not None and out.srm.split == 0.5
    wt = out.watch_through_test
    assert wt is not None and wt.diff is None and wt.reason == "not enough data"
    assert out.winner is not None and out.winner.variant is None
    assert out.winner.reason == "not enough data"


def many_users(n: int = 60, rate_b: float = 0.5) -> tuple:
    """`n` users per arm, one response each spread over the window, skewed list lengths;
    users of B watch more of what they are shown."""
    rng = np.random.default_rng(0)
    rows, watch = [], []
    for u in range(1, 2 * n + 1):
        v = "A" if u % 2 else "B"
        k = int(rng.integers(1, 6))
        t = float(rng.uniform(1, 59))
        rows.append((t, u, v, list(range(1, k + 1))))
        p = 0.3 if v == "A" else rate_b
        watch += [(t - 0.5, u, i) for i in range(1, k + 1) if rng.random() < p]
    rating = ratings([(m, u, i, 1 + (u * i) % 5) for m, u, i in watch])
    return reco_log(rows), watches(watch), rating


def test_the_tests_are_user_level_and_the_srm_uses_the_split_in_force():
    reco, watch, rating = many_users()
    win = window(reco, watch, rating)
    out = experiment.compute(CFG, 0.6, reco, win, {"A": fair(), "B": fair()})
    a, b = (experiment.arm_users(reco, win, v) for v in "AB")
    ref = lift.fixed_horizon(a.ratio(), b.ratio(), relative=False)
    wt = out.watch_through_test
    assert wt is not None and wt.diff == pytest.approx(ref.estimate)
    assert wt.p_value == pytest.approx(ref.p_value)
    assert wt.relative == pytest.approx(lift.fixed_horizon(a.ratio(), b.ratio()).estimate)
    welch = stats.ttest_ind(b.rating_means, a.rating_means, equal_var=False)
    assert out.rating_test is not None and out.rating_test.p_value == pytest.approx(
        welch.pvalue)
    chi = stats.chisquare([len(a.ids), len(b.ids)],
                          [0.6 * (len(a.ids) + len(b.ids)), 0.4 * (len(a.ids) + len(b.ids))])
    assert out.srm is not None and out.srm.split == 0.6
    assert out.srm.p_value == pytest.approx(chi.pvalue)
    assert out.bayes is not None and 0.5 < out.bayes.chance_to_win <= 1  # B watches more


def test_each_look_sees_only_what_had_happened_by_then():
    reco, watch, rating = many_users()
    late = reco_log([(m, u, v, items) for m, u, v, items in
                     [(2.0 * (i % 2) + 1, i, "A" if i % 2 else "B", [1, 2, 3])
                      for i in range(1, 41)]])  # every response in the last 3 minutes
    late_watch = watches([(0.5, i, 1 + i % 3) for i in range(1, 41) if i % 3 or i % 4])
    win = window(late, late_watch)
    seq = experiment.sequential(CFG, *(experiment.arm_users(late, win, v) for v in "AB"))
    assert len(seq.series) == experiment.LOOKS
    assert seq.series[:-1] == [None] * (experiment.LOOKS - 1) and seq.series[-1] is not None
    win = window(reco, watch, rating)
    a, b = (experiment.arm_users(reco, win, v) for v in "AB")
    # look 6 of 12 (the window's first half): only the users recommended something by then,
    # with only their watches by then
    half = a.ratio(5)
    first = (reco.ts < win.start + win.length / 2) & reco.arm("A")
    assert half.n == len(np.unique(reco.user[first]))
    assert half.d.sum == win.lengths[first].sum()
    mine = np.isin(watch["user_id"].to_numpy(), reco.user[first]) & (
        win.watch_ts < win.start + win.length / 2)
    assert half.m.sum == mine.sum()  # their watches by then only
    full = experiment.sequential(CFG, a, b)
    looks = [lift.always_valid(a.ratio(k), b.ratio(k), alpha=CFG.alpha) for k in range(12)]
    assert full.p_value == min(x.p_value for x in looks if x.p_value is not None)
    assert full.ci_low == max(x.ci_low for x in looks if x.ci_low is not None)
    assert full.ci_high == min(x.ci_high for x in looks if x.ci_high is not None)


def test_one_arm_has_figures_but_no_tests():
    reco = reco_log([(10, 1, "A", [1, 2])])
    out = experiment.compute(CFG, 0.5, reco, window(reco), {})
    assert list(out.arms) == ["A"] and out.arms["A"].watch_through == 0.0
    assert out.watch_through_test is None and out.srm is None and out.winner is None


@pytest.mark.parametrize(("p", "mismatch", "passes", "variant", "reason"), [
    (0.2, False, True, None, "not significant yet"),
    (None, False, True, None, "not significant yet"),
    (0.01, True, True, None, "sample ratio mismatch"),
    (0.01, False, False, None, "B leads but fails a fairness guardrail"),
    (0.01, False, True, "B", "significant and within the fairness guardrails"),
])
def test_verdict(p, mismatch, passes, variant, reason):
    wt = LiftTest(metric="watch-through", diff=0.02, ci_low=0.0, ci_high=0.04, relative=0.1,
                  relative_ci_low=0.0, relative_ci_high=0.2, p_value=0.01)
    srm = SampleRatio(chi2=0.1, p_value=0.5, mismatch=mismatch)
    seq = Sequential(p_value=p, series=[1.0, p or 1.0])
    w = experiment.verdict(CFG, wt, srm, seq, {"A": fair(), "B": fair(passes)})
    assert w.leader == "B" and w.variant == variant and w.reason.startswith(reason)


def test_srm_is_not_checked_over_a_window_the_split_changed_in():
    from tests.unit.analytics_cases import ago

    reco, watch, rating = many_users()
    win = window(reco, watch, rating)
    skewed = experiment.compute(CFG, 0.9, reco, win, {"A": fair(), "B": fair()})
    assert skewed.srm is not None and skewed.srm.mismatch  # 60/60 users against 90/10
    during = experiment.compute(CFG, 0.9, reco, win, {"A": fair(), "B": fair()},
                                [ago(90), ago(20)])
    assert during.srm is not None and not during.srm.mismatch
    assert during.srm.p_value is None and "changed" in (during.srm.reason or "")
    before = experiment.compute(CFG, 0.9, reco, win, {"A": fair(), "B": fair()}, [ago(90)])
    assert before.srm is not None and before.srm.mismatch


def test_an_arm_whose_every_user_moved_has_no_users_and_no_figures():
    reco = reco_log([(50, 1, "B", [4]), (10, 1, "A", [1, 2]), (20, 3, "A", [3])])
    watch = watches([(5, 1, 1), (15, 3, 3)])
    out = experiment.compute(CFG, 0.5, reco, window(reco, watch), {"A": fair(), "B": fair()})
    b = out.arms["B"]
    assert (b.requests, b.users, b.recommended_items, b.watches) == (1, 0, 0, 0)
    assert b.watch_through is None and out.winner is not None
    assert out.winner.reason == "not enough data"
