"""Long-tail section: popularity groups and starvation."""

from __future__ import annotations

import numpy as np
import pytest

from backend.analytics import tail
from backend.core.settings import AnalyticsSettings
from tests.unit.analytics_cases import ratings, reco_log, watches, window

CFG = AnalyticsSettings(head_share=1 / 3, tail_share=1 / 3, starvation_ratio=1.5)
WATCH = watches([(5, 1, 6), (5, 2, 6), (5, 3, 5), (5, 1, 4), (-5, 1, 1)])  # last: future
RATING = ratings([(5, 2, 5, 3)])


def test_popularity_groups_by_watches_and_ratings_so_far():
    reco = reco_log([(10, 1, "A", [1])])
    win = window(reco, WATCH, RATING)
    # popularity 6: 2, 5: 2, 4: 1, the rest 0 (ties by id): head {5, 6}, tail {2, 3}
    assert tail.popularity_groups(CFG, win).tolist() == [1, 2, 2, 1, 0, 0]


def test_rates_and_starvation_per_arm():
    reco = reco_log([(10, 1, "A", [5, 6]), (10, 2, "B", [5, 1, 2])])
    win = window(reco, WATCH, RATING)  # head {5, 6}, mid {1, 4}, tail {2, 3}
    exposure = {v: win.exposure(win.mask(reco, v)) for v in ["A", "B", "all"]}
    out = tail.compute(CFG, win, exposure)
    a, b = out["A"], out["B"]
    assert (a.rates.head, a.rates.mid, a.rates.tail) == (1.0, 0.0, 0.0)
    assert a.head_tail_ratio is None and a.starved and a.limit == 1.5  # an unseen tail
    assert (b.rates.head, b.rates.mid, b.rates.tail) == pytest.approx((0.5, 0.5, 0.5))
    assert b.head_tail_ratio == 1.0 and not b.starved
    assert out["all"].rates.head == 1.0


def test_arm_tail_of_an_empty_catalog():
    out = tail.arm_tail(CFG, np.zeros(0), np.zeros(0, dtype=np.int64))
    assert out.rates.head == 0.0 and out.head_tail_ratio is None and not out.starved
