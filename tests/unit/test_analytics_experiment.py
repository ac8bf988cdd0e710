"""Experiment section: per-arm figures, the tests of B against A, and the verdict."""

from __future__ import annotations

import pytest

from backend.analytics import experiment
from backend.analytics.snapshot import (
    Fairness,
    MaxRequirement,
    MinRequirement,
    ProportionTest,
    Requirements,
    SampleRatio,
    Sequential,
)
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics import abtest
from tests.unit.analytics_cases import ratings, reco_log, watches, window

CFG = AnalyticsSettings(alpha=0.05)


def fair(passes: bool = True) -> Fairness:
    return Fairness(coverage=0.9, gini=0.1, top10_share=0.1, exposure_gini=0.1, diversity=None,
                    diversity_by_segment={}, parity_gap={}, requirements=Requirements(
                        coverage=MinRequirement(value=0.9, min=0.8, passed=passes),
                        parity=MaxRequirement(value=0.0, max=0.15, passed=True)))


def test_arms_attribute_users_to_their_latest_variant():
    reco = reco_log([(50, 1, "B", [4]),  # user 1 moved to A since
                     (10, 1, "A", [1, 2]), (20, 3, "A", [3]), (15, 2, "B", [4, 5, 6])])
    watch = watches([(5, 1, 1), (4, 1, 2), (5, 2, 4), (70, 2, 5)])  # the last: before
    rating = ratings([(5, 1, 1, 4), (4, 1, 2, 5), (5, 2, 4, 3)])
    out = experiment.compute(CFG, 0.5, reco, window(reco, watch, rating),
                             {"A": fair(), "B": fair()})
    a, b = out.arms["A"], out.arms["B"]
    assert (a.requests, a.users, a.recommended_items, a.watches) == (2, 2, 3, 2)
    assert (b.requests, b.users, b.recommended_items, b.watches) == (2, 1, 4, 1)
    assert a.watch_through == pytest.approx(2 / 3) and b.watch_through == pytest.approx(1 / 4)
    assert a.watch_through_ci == pytest.approx(abtest.proportion_ci(2, 3))
    assert a.mean_rating == 4.5 and a.mean_rating_ci == pytest.approx(abtest.mean_ci([4, 5]))
    assert b.ratings == 1 and b.mean_rating_ci == (None, None)  # one rating: no interval
    assert out.srm == SampleRatio.model_validate(abtest.sample_ratio_mismatch([2, 1],
                                                                             [0.5, 0.5]))
    assert out.watch_through_test is not None and out.watch_through_test.diff == \
        pytest.approx(1 / 4 - 2 / 3)
    assert out.rating_test is not None and out.rating_test.p_value == 1.0  # B: one rating
    seq = out.sequential
    assert seq is not None and len(seq.series) == experiment.LOOKS
    assert seq.series == sorted(seq.series, reverse=True) and seq.p_value == seq.series[-1]
    assert out.winner is not None and out.winner.leader == "A"


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
    z = ProportionTest(diff=0.02, z=2.5, p_value=0.01, ci_low=0.0, ci_high=0.04)
    srm = SampleRatio(chi2=0.1, p_value=0.5, mismatch=mismatch)
    seq = Sequential(p_value=p, series=[1.0, p or 1.0])
    w = experiment.verdict(CFG, z, srm, seq, {"A": fair(), "B": fair(passes)})
    assert w.leader == "B" and w.variant == variant and w.reason.startswith(reason)
