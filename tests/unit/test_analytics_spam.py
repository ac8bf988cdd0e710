"""Spam section: the detectors' flags over the window's ratings, the loudest raters."""

from __future__ import annotations

import numpy as np
import pytest

from backend.analytics import spam
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics.spam import detect
from tests.unit.analytics_cases import ratings

CFG = AnalyticsSettings()


def attack() -> list[tuple[float, int, int, int]]:
    """40 honest users rating a few items over the hour; 3 bots pushing 30 items at 5."""
    rng = np.random.default_rng(0)
    rows = [(float(rng.uniform(1, 59)), u, int(i), int(rng.integers(1, 6)))
            for u in range(1, 41) for i in rng.choice(np.arange(1, 200), 4, replace=False)]
    rows += [(2.0, bot, item, 5) for bot in (901, 902, 903) for item in range(100, 130)]
    return rows


def test_no_ratings_no_raters():
    out = spam.compute(CFG, ratings([]))
    assert out.raters == 0 and out.three_sigma_line is None and out.users == []
    assert all(users == [] for _, users in out.flagged.by_detector())


def test_flags_line_and_loudest_raters():
    frame = ratings(attack())
    out = spam.compute(CFG, frame, top=5)
    flags = detect(frame, CFG.spam_z, CFG.spam_bucket)
    assert out.raters == 43
    assert set(out.flagged.combined) == {901, 902, 903}
    for name, users in out.flagged.by_detector():
        assert users == sorted(flags.index[flags[name]].tolist()), name
    assert out.three_sigma_line == pytest.approx(
        flags["count"].mean() + 3 * flags["count"].std(ddof=0))
    # every rater in the histogram; the robust line where robust_count starts flagging
    assert sum(n for _, n in out.count_histogram) == 43
    assert dict(out.count_histogram) == flags["count"].value_counts().to_dict()
    above = flags.index[flags["count"] > out.robust_line]
    assert set(above) == set(flags.index[flags["robust_count"]]) == {901, 902, 903}
    assert len(out.users) == 5 and [u.count for u in out.users[:3]] == [30, 30, 30]
    assert {u.user_id for u in out.users[:3]} == {901, 902, 903}
    assert all(u.combined == (u.user_id > 900) for u in out.users)


def test_a_push_needs_unprompted_ratings_beyond_the_items_past_rate():
    """Four users rate item 6 at 5 within the hour; its past (the day before) has none."""
    from tests.unit.analytics_cases import reco_log, window

    past = [(60 * 24 + n, 50 + n % 30, 1 + n % 5, 5) for n in range(300)]
    now = [(30.0, u, 6, 5) for u in (1, 2, 3, 4)] + [(20.0, 9, 2, 4)]
    frame = ratings(past + now)
    shown = reco_log([(40.0, u, "A", [6, 1]) for u in (1, 2, 3, 4)])
    unshown = reco_log([(40.0, u, "A", [1, 2]) for u in (1, 2, 3, 4)])
    for reco, pushed in ((unshown, [1, 2, 3, 4]), (shown, [])):
        win = window(reco, rating=frame)
        out = spam.compute(CFG, win.rating_in, win.rating_before[["item_id", "rating"]],
                           win.unprompted(reco, win.rating_in))
        assert out.flagged.target == pushed and out.flagged.combined == pushed
    assert window(shown, rating=frame).unprompted(shown, ratings(now)).tolist() == [
        False] * 4 + [True]


@pytest.mark.parametrize("layout", ["sparse", "dense"])
@pytest.mark.parametrize("seed", [8, 9])
def test_degsim_in_either_layout_is_the_definition(monkeypatch, layout, seed):
    """DegSim (Chirita et al. 2005, Jaccard): each user's mean similarity to the k most
    similar other users, computed here over all pairs with Python sets as the reference;
    both layouts, several chunks (the last one short), the dense one with items on both
    sides of its BLAS/sparse split, and seed 9 with many tied similarities."""
    import numpy as np
    import pandas as pd

    from backend.ml.metrics import spam

    rng = np.random.default_rng(seed)
    n = 4000
    items = rng.zipf(1.5, n) % 90 if seed == 8 else rng.integers(0, 6, n)
    ratings = pd.DataFrame({"user_id": rng.integers(1, 700, n), "item_id": items,
                            "rating": 5})
    users = np.sort(ratings["user_id"].unique())
    sets = {u: set(g) for u, g in ratings.groupby("user_id")["item_id"]}
    ref = []
    for u in users:
        sims = sorted((len(sets[u] & sets[v]) / len(sets[u] | sets[v]) for v in users
                       if v != u), reverse=True)
        ref.append(np.mean(sims[:5]))
    monkeypatch.setattr(spam, "CHUNK_ROWS", 37)
    monkeypatch.setattr(spam, "SEGMENT", 16)
    if layout == "dense":
        monkeypatch.setattr(spam, "DENSE_AT", 0.0)
        monkeypatch.setattr(spam, "DENSE_CELLS", 37 * 720)
        monkeypatch.setattr(spam, "HEAVY_SHARE", 0.02)
        monkeypatch.setattr(spam, "FLOOR_SAMPLE", 100)  # a floor from 112 users
    else:
        monkeypatch.setattr(spam, "DENSE_AT", 1e9)
    got = spam.degsim(ratings, k=5)
    some = spam.degsim(ratings, k=5, only=users[::3])
    np.testing.assert_allclose(got.to_numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(some.to_numpy(), np.asarray(ref)[::3], rtol=1e-12)


def test_top_k_sums_is_the_sorted_definition():
    import numpy as np

    from backend.ml.metrics import spam

    rng = np.random.default_rng(3)
    row = rng.integers(0, 50, 3000)
    values = rng.integers(0, 8, 3000) / 7.0  # many ties
    for k in (1, 3, 200):
        want = [sum(sorted(values[row == r], reverse=True)[:k]) for r in range(52)]
        np.testing.assert_allclose(spam.top_k_sums(row, values, 52, k), want, rtol=1e-12)
