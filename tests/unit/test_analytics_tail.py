"""Long-tail section: popularity groups (before the window, over the catalog of the day),
recommendation rates, exposure shares and starvation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.analytics import tail
from backend.analytics.window import ArmExposure
from backend.core.settings import AnalyticsSettings
from tests.unit.analytics_cases import END, ITEMS, ratings, reco_log, watches, window

CFG = AnalyticsSettings(head_share=1 / 3, tail_share=1 / 3, starvation_ratio=1.5)
# before the window (it is the last 60 minutes): the training window's popularity
WATCH = watches([(65, 1, 6), (70, 2, 6), (65, 3, 5), (65, 1, 4),
                 (5, 1, 1), (5, 2, 1), (-5, 1, 1)])  # in the window, in the future: not counted
RATING = ratings([(90, 2, 5, 3), (5, 3, 2, 4)])


def test_popularity_groups_by_watches_and_ratings_before_the_window():
    reco = reco_log([(10, 1, "A", [1])])
    win = window(reco, WATCH, RATING)
    # popularity 6: 2, 5: 2, 4: 1, the rest 0 (ties by id): head {5, 6}, tail {2, 3}
    assert tail.popularity_groups(CFG, win).tolist() == [1, 2, 2, 1, 0, 0]


def test_items_released_later_are_in_no_group():
    items = ITEMS.assign(released_at=[None] * 5 + [(END + pd.Timedelta(hours=1)).isoformat()])
    reco = reco_log([(10, 1, "A", [1])])
    win = window(reco, WATCH, RATING, items=items)
    # five items: head round(5/3) = 2 {5, 4}, tail 2 {2, 3}; item 6 not out yet
    assert tail.popularity_groups(CFG, win).tolist() == [1, 2, 2, 0, 0, -1]


def test_rates_and_starvation_per_arm():
    reco = reco_log([(10, 1, "A", [5, 6]), (10, 2, "B", [5, 1, 2])])
    win = window(reco, WATCH, RATING)  # head {5, 6}, mid {1, 4}, tail {2, 3}
    exposure = {v: win.exposure(win.mask(reco, v)) for v in ["A", "B", "all"]}
    out = tail.compute(CFG, win, exposure)
    a, b = out["A"], out["B"]
    assert (a.rates.head, a.rates.mid, a.rates.tail) == (1.0, 0.0, 0.0)
    assert a.head_tail_ratio is None and a.starved and a.limit == 1.5  # an unseen tail
    assert (b.rates.head, b.rates.mid, b.rates.tail) == pytest.approx((0.5, 0.5, 0.5))
    assert b.head_tail_ratio == 1.0 and not b.starved and b.reason is None
    assert a.reason == "no tail item was recommended"
    assert out["all"].rates.head == 1.0
    # exposure: B shows 5, 1, 2 at ranks 1..3: weights 1, 1/log2(3), 1/2
    w = np.array([1, 1 / np.log2(3), 0.5])
    share = b.exposure_share
    assert (share.head, share.mid, share.tail) == pytest.approx(tuple(w / w.sum()))
    assert (a.exposure_share.head, a.exposure_share.tail) == (1.0, 0.0)


def test_arm_tail_without_recommendations_or_catalog():
    empty = ArmExposure(counts=np.zeros(0), weighted=np.zeros(0))
    out = tail.arm_tail(CFG, empty, np.zeros(0, dtype=np.int64))
    assert out.rates.head == 0.0 and out.head_tail_ratio is None and not out.starved
    assert out.exposure_share is None and out.reason == "nothing was recommended"
