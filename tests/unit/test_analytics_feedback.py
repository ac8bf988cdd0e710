"""Feedback-loop section: concentration per window, its trend, homogenisation."""

from __future__ import annotations

import numpy as np
import pytest

from backend.analytics import feedback
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics.fairness import top_share
from backend.ml.metrics.feedback import homogenization
from backend.ml.metrics.ranking import gini
from tests.unit.analytics_cases import reco_log, watches, window

CFG = AnalyticsSettings(window_minutes=60, echo_windows=2, echo_slope_max=0.01)


def counts(*items: int) -> np.ndarray:
    return np.bincount(np.asarray(items) - 1, minlength=6).astype(float)


def test_concentration_per_window_and_trend():
    reco = reco_log([(150, 1, "A", [4, 5, 6]),  # older than the two windows: ignored
                     (90, 1, "A", [1, 2]), (80, 1, "A", [1, 3]),  # window 0
                     (30, 1, "A", [1, 2]), (30, 2, "B", [4, 5])])  # window 1
    echo = feedback.compute(CFG, reco, window(reco))
    assert echo.windows == 2 and list(echo.variants) == ["A", "B", "all"]
    a, b, both = echo.variants["A"], echo.variants["B"], echo.variants["all"]
    assert a.gini == pytest.approx([gini(counts(1, 2, 1, 3)), gini(counts(1, 2))])
    assert a.top10_share == [1.0, 1.0]
    assert b.gini == [None, pytest.approx(gini(counts(4, 5)))]  # no B in window 0
    assert both.gini == pytest.approx([gini(counts(1, 2, 1, 3)), gini(counts(1, 2, 4, 5))])
    assert both.top10_share[1] == top_share(counts(1, 2, 4, 5))
    # two windows: the slope is their difference, too few points for an interval
    assert a.gini_trend.slope == pytest.approx(a.gini[1] - a.gini[0])
    assert a.gini_trend.windows == 2 and a.gini_trend.ci_low is None
    assert a.gini_trend.detected == (a.gini_trend.slope > 0.01)
    assert b.gini_trend.windows == 1 and b.gini_trend.slope == 0.0  # one window: no trend


def test_homogenization_overall_and_per_arm():
    reco = reco_log([(10, 1, "A", [1]), (10, 2, "B", [2]), (10, 4, "B", [3])])
    watch = watches([(5, 1, 1), (5, 1, 2), (5, 2, 2), (5, 2, 3), (5, 3, 1), (5, 4, 3),
                     (-5, 4, 1)])  # after the window's end: not counted
    echo = feedback.compute(CFG, reco, window(reco, watch))
    upto = watch.iloc[:-1]
    assert echo.homogenization == pytest.approx(homogenization(
        upto["user_id"].to_numpy(), upto["item_id"].to_numpy()))
    # B: users 2 {2, 3} and 4 {3}: Jaccard 1/2; A has one user
    assert echo.homogenization_by_variant == pytest.approx({"A": 0.0, "B": 0.5})
