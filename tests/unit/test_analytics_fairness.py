"""Fairness section: coverage, concentration, list diversity by segment, requirements."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from backend.analytics import fairness
from backend.core.settings import AnalyticsSettings
from tests.unit.analytics_cases import ITEMS, USERS, ratings, reco_log, window


def test_list_diversity_per_response():
    reco = reco_log([(10, 1, "A", [1, 2]),  # Drama, Comedy: orthogonal
                     (10, 2, "A", [1, 5]),  # Drama twice
                     (10, 3, "A", [1, 3]),  # Drama vs Drama+Comedy: cos = 1/sqrt(2)
                     (10, 4, "A", [4]),  # one item: no pairs
                     (90, 1, "A", [1, 2])])  # outside the window
    ild = fairness.list_diversity(reco, window(reco), ITEMS)
    assert ild[:3] == pytest.approx([1.0, 0.0, 1 - 1 / math.sqrt(2)])
    assert np.isnan(ild[3]) and np.isnan(ild[4])
    no_genres = ITEMS.drop(columns="genres")
    assert np.isnan(fairness.list_diversity(reco, window(reco), no_genres)).all()


def test_figures_segments_and_requirements():
    cfg = AnalyticsSettings(coverage_min=0.5, parity_gap_max=0.4)
    reco = reco_log([(10, 1, "A", [1, 2]), (20, 1, "A", [1, 5]),  # user 1 (F): 0.5
                     (10, 2, "A", [1, 5]),  # user 2 (M): 0.0
                     (10, 99, "A", [1, 2]),  # a user without demographics: 1.0
                     (10, 3, "B", [4, 6])])
    rating = ratings([(5, 1, 1, 4)] * 12)  # user 1 is "medium" activity
    win = window(reco, rating=rating)
    exposure = {v: win.exposure(win.mask(reco, v)) for v in ["A", "B", "all"]}
    out = fairness.compute(cfg, reco, win, exposure, ITEMS, USERS)
    assert list(out) == ["A", "B", "all"]
    a = out["A"]
    assert a.coverage == pytest.approx(3 / 6)  # items 1, 2, 5
    assert a.top10_share == 1.0
    assert a.diversity == pytest.approx(np.mean([1.0, 0.0, 0.0, 1.0]))  # per response
    assert a.diversity_by_segment["gender"] == pytest.approx(
        {"F": 0.5, "M": 0.0, "unknown": 1.0})
    assert a.diversity_by_segment["activity"] == pytest.approx({"low": 0.5, "medium": 0.5})
    assert a.parity_gap["gender"] == pytest.approx(0.5)  # "unknown" left out of the gap
    req = a.requirements
    assert req.coverage.passed and req.coverage.min == 0.5
    assert req.parity.value == pytest.approx(0.5) and not req.parity.passed
    assert req.failed() == ["parity"]
    assert out["B"].coverage == pytest.approx(2 / 6) and out["B"].requirements.failed() == [
        "coverage"]


def test_an_arm_without_lists_has_no_diversity():
    reco = reco_log([(10, 1, "A", [1])])
    win = window(reco)
    out = fairness.compute(AnalyticsSettings(), reco, win,
                           {"A": win.exposure(win.mask(reco, "A"))}, ITEMS,
                           pd.DataFrame({"user_id": []}))
    assert out["A"].diversity is None and out["A"].diversity_by_segment == {"activity": {}}
    assert out["A"].parity_gap == {"activity": 0.0}
    assert out["A"].requirements.parity.value == 0.0 and out["A"].requirements.parity.passed
