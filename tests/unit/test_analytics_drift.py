"""Drift section: PSI of the window's ratings and item popularity against the past."""

from __future__ import annotations

import pytest

from backend.analytics import drift
from backend.ml.metrics import ops
from tests.unit.analytics_cases import ratings, reco_log, watches, window


def test_rating_and_popularity_psi_against_the_past():
    rating = ratings([(90, 1, 1, 5), (80, 2, 1, 4), (70, 3, 2, 4),  # before the window
                      (10, 1, 3, 1), (5, 2, 3, 2), (-5, 3, 3, 5)])  # in it; the last: after
    watch = watches([(100, 1, 1), (20, 2, 4)])
    out = drift.compute(window(reco_log([]), watch, rating))
    assert out.rating_hist_train == [0, 0, 0, 2, 1] and out.rating_hist_now == [1, 1, 0, 0, 0]
    assert out.rating_psi == pytest.approx(ops.psi([0, 0, 0, 2, 1], [1, 1, 0, 0, 0]))
    # interactions per item before: 1 x3, 2 x1; in the window: 3 x2, 4 x1
    train, now = [3, 1, 0, 0, 0, 0], [0, 0, 2, 1, 0, 0]
    assert out.popularity_psi == pytest.approx(ops.psi(*ops.popularity_bins(train, now)))


def test_no_events_in_the_window_no_psi():
    out = drift.compute(window(reco_log([]), rating=ratings([(90, 1, 1, 5)])))
    assert out.rating_psi is None and out.popularity_psi is None
    assert out.rating_hist_train == [0, 0, 0, 0, 1] and out.rating_hist_now == [0] * 5


def test_no_ratings_before_the_window_no_rating_psi_rather_than_zero():
    out = drift.compute(window(reco_log([]), rating=ratings([(10, 1, 1, 5), (5, 2, 1, 4)])))
    assert out.rating_hist_train == [0] * 5 and out.rating_psi is None
