"""Drift section: PSI of the window's ratings and item popularity against the past, over all
traffic and per variant, and only where the counts can tell a shift from noise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from backend.analytics import drift
from backend.ml.metrics import ops
from tests.unit.analytics_cases import ratings, reco_log, watches, window

N = 200  # copies of each hand-written event: enough for the PSI to be supported


def test_rating_and_popularity_psi_against_the_past():
    rating = ratings([(90, 1, 1, 5), (80, 2, 1, 4), (70, 3, 2, 4),  # before the window
                      (10, 1, 3, 1), (5, 2, 3, 2), (-5, 3, 3, 5)] * N)  # in it; the last: after
    watch = watches([(100, 1, 1), (20, 2, 4)] * N)
    out = drift.compute(window(reco_log([]), watch, rating))
    assert out.rating_hist_train == [0, 0, 0, 2 * N, N]
    assert out.rating_hist_now == [N, N, 0, 0, 0]
    assert out.rating_psi == pytest.approx(ops.psi([0, 0, 0, 2, 1], [1, 1, 0, 0, 0]))
    # interactions per item before: 1 x3, 2 x1; in the window: 3 x2, 4 x1
    train, now = [3, 1, 0, 0, 0, 0], [0, 0, 2, 1, 0, 0]
    assert out.popularity_psi == pytest.approx(ops.psi(*ops.popularity_bins(train, now)))
    assert out.by_variant == {}  # no recommendation in the window: no variant's users


def test_per_variant_drift_by_the_users_each_variant_served():
    """Users 1, 2 served by A rate low now; user 3 (B) rates as everyone did before."""
    reco = reco_log([(30, 1, "A", [1]), (30, 2, "A", [1]), (30, 3, "B", [1]),
                     (120, 3, "A", [1])])  # before the window: not an assignment
    before = [(90, u, 1, r) for u, r in ((1, 5), (2, 4), (3, 4), (3, 5))] * N
    now = [(10, 1, 1, 1), (10, 2, 1, 2), (10, 3, 1, 4), (10, 3, 1, 5)] * N
    out = drift.compute(window(reco, rating=ratings(before + now)))
    a, b = out.by_variant["A"], out.by_variant["B"]
    assert (a.ratings_now, b.ratings_now) == (2 * N, 2 * N)
    train = [0, 0, 0, 2, 2]
    assert a.rating_psi == pytest.approx(ops.psi(train, [1, 1, 0, 0, 0]))
    assert b.rating_psi == pytest.approx(ops.psi(train, [0, 0, 0, 1, 1]))
    assert a.rating_psi > 1 and b.rating_psi < 0.1
    assert out.rating_psi == pytest.approx(ops.psi(train, [1, 1, 0, 1, 1]))


def test_a_shift_seen_in_too_few_events_is_not_enough_data():
    rating = ratings([(90, 1, 1, 5)] * 40 + [(10, 1, 1, 1)] * 20)
    out = drift.compute(window(reco_log([(10, 1, "A", [1])]), rating=rating))
    assert out.rating_hist_now == [20, 0, 0, 0, 0] and out.rating_psi is None
    assert out.by_variant["A"].rating_psi is None and out.by_variant["A"].ratings_now == 20


def test_no_events_in_the_window_no_psi():
    out = drift.compute(window(reco_log([]), rating=ratings([(90, 1, 1, 5)])))
    assert out.rating_psi is None and out.popularity_psi is None
    assert out.rating_hist_train == [0, 0, 0, 0, 1] and out.rating_hist_now == [0] * 5


def test_no_ratings_before_the_window_no_rating_psi_rather_than_zero():
    out = drift.compute(window(reco_log([]), rating=ratings([(10, 1, 1, 5), (5, 2, 1, 4)] * N)))
    assert out.rating_hist_train == [0] * 5 and out.rating_psi is None


@pytest.mark.parametrize(("bins", "n", "m"), [(5, 400, 400), (5, 300, 3000), (10, 500, 800),
                                               (5, 100, 150), (10, 150, 5000)])
def test_the_support_rule_matches_the_psi_of_samples_with_no_shift(bins, n, m):
    """The rule's noise bound against a Monte Carlo: PSIs of two samples from one
    distribution. Supported exactly when their 95th percentile is below 0.1."""
    rng = np.random.default_rng(bins * n + m)
    p = rng.dirichlet(np.full(bins, 5.0))
    psis = [ops.psi(rng.multinomial(n, p), rng.multinomial(m, p)) for _ in range(4000)]
    simulated = float(np.quantile(psis, 0.95))
    assert simulated == pytest.approx(stats.chi2.ppf(0.95, bins - 1) * (1 / n + 1 / m),
                                      rel=0.15)
    assert ops.psi_supported(bins, n, m) == (simulated < 0.1)


def test_arm_codes_are_isin_per_variant():
    import numpy as np

    from backend.analytics.drift import arm_codes
    from tests.unit.analytics_cases import reco_log, window

    rng = np.random.default_rng(3)
    reco = reco_log([(float(rng.uniform(0, 120)), int(rng.integers(1, 30)),
                      str(rng.choice(["A", "B", "C"])), [1]) for _ in range(200)])
    win = window(reco)
    users = rng.integers(-3, 40, 500)
    got = arm_codes(win, users)
    for j, v in enumerate(win.variants):
        theirs = win.arm.index[win.arm.to_numpy() == v].to_numpy(dtype=np.int64)
        assert ((got == j) == np.isin(users, theirs)).all()
    assert ((got == -1) == ~np.isin(users, win.arm.index.to_numpy())).all()
