"""Analytics metrics against hand-computed cases and scipy.stats."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from backend.ml.metrics import abtest, fairness, feedback, ops, spam
from backend.ml.metrics.ranking import aplt, catalog_coverage, exposure_counts, gini

# A shared example for the published definitions: catalog of 5 items, three lists.
LISTS = [[1, 2], [1, 3], [1, 2]]
CATALOG = [1, 2, 3, 4, 5]


def test_shared_example_matches_recbole_definitions():
    counts = exposure_counts(LISTS, CATALOG)  # 3, 2, 1, 0, 0
    assert counts.tolist() == [3, 2, 1, 0, 0]
    # RecBole GiniIndex: sorted ascending 0,0,1,2,3; sum (2i-n-1) x_i / (n sum x)
    # = (0*1 + 2*2 + 4*3) / (5 * 6) = 16 / 30
    assert gini(counts) == pytest.approx(16 / 30)
    # RecBole ItemCoverage: 3 of 5 items shown
    assert catalog_coverage(LISTS, 5) == pytest.approx(0.6)
    # RecBole/Elliot APLT with tail {3, 4, 5}: per list 0, 1/2, 0 -> 1/6
    assert aplt(LISTS, {3, 4, 5}) == pytest.approx(1 / 6)


def test_top_share_and_position_weighted_exposure():
    counts = np.array([5, 3, 1, 1, 0])
    assert fairness.top_share(counts, 2) == pytest.approx(0.8)
    assert fairness.top_share(np.zeros(3)) == 0.0
    exp = fairness.position_weighted_exposure([[1, 2], [2, 9]], [1, 2, 3])
    # item 1 at rank 1 (weight 1), item 2 at ranks 2 and 1 (1/log2(3) + 1); 9 not in catalog
    assert exp.tolist() == pytest.approx([1.0, 1 + 1 / math.log2(3), 0.0])
    assert fairness.exposure_gini([[1, 2]], [1, 2]) == pytest.approx(
        gini(np.array([1.0, 1 / math.log2(3)])))


def test_segments_and_parity():
    assert [fairness.activity_segment(n) for n in (0, 9, 10, 30, 31)] == \
        ["low", "low", "medium", "medium", "high"]
    assert fairness.age_band(17) == "<18" and fairness.age_band(25) == "25-34"
    assert fairness.age_band(float("nan")) == "unknown"
    feats = {1: np.array([1.0, 0.0]), 2: np.array([0.0, 1.0]), 3: np.array([1.0, 0.0])}
    lists = {10: [[1, 2]], 11: [[1, 3]], 12: [[1, 2], [1, 3]]}
    div = fairness.diversity_by_segment(lists, {10: "a", 11: "b", 12: "a"}, feats)
    # user 10: distance 1; user 12: mean(1, 0) = 0.5 -> segment a = 0.75; b = 0
    assert div == {"a": pytest.approx(0.75), "b": pytest.approx(0.0)}
    assert fairness.parity_gap(div) == pytest.approx(0.75)
    assert fairness.parity_gap({"a": 0.3}) == 0.0
    users = pd.DataFrame({"user_id": [1, 2], "age": [20, None], "gender": ["F", "M"]})
    seg = fairness.segments(users, {1: 40})
    assert seg == {"activity": {1: "high", 2: "low"}, "gender": {1: "F", 2: "M"},
                   "age": {1: "18-24", 2: "unknown"}}


def test_trend_matches_linregress_and_detects():
    y = [0.50, 0.52, 0.55, 0.55, 0.60]
    t = feedback.trend(y, limit=0.01)
    ref = stats.linregress(np.arange(5), y)
    half = stats.t.ppf(0.975, 3) * ref.stderr
    assert t.slope == pytest.approx(ref.slope)
    assert (t.ci_low, t.ci_high) == pytest.approx((ref.slope - half, ref.slope + half))
    assert t.detected  # slope 0.023 per window
    assert not feedback.trend([0.5, 0.5, 0.5]).detected
    short = feedback.trend([0.5, 0.7])
    assert not short.detected and short.slope is None and short.reason


def test_homogenization_jaccard():
    # watched sets {1: {1, 2}, 2: {2, 3}, 3: {7}} (user 1 watched item 2 twice)
    users, items = np.array([1, 1, 1, 2, 2, 3]), np.array([1, 2, 2, 2, 3, 7])
    # pairs: (1,2) 1/3, (1,3) 0, (2,3) 0
    assert feedback.homogenization(users, items) == pytest.approx(1 / 9)
    same = np.repeat(np.arange(200), 2), np.tile([5, 100], 200)
    assert feedback.homogenization(*same, pairs=500, seed=1) == pytest.approx(1.0)
    assert feedback.homogenization(np.array([1]), np.array([1])) is None  # no pair
    assert feedback.homogenization(np.array([], int), np.array([], int)) is None


def test_rarefied_concentration_matches_the_full_figures_and_a_reference_sample():
    items = np.array([0, 0, 1, 2, 0, 3])
    full = feedback.rarefied_concentration(items, 8, size=6, repeats=3)
    counts = np.bincount(items, minlength=8)
    assert full.gini == pytest.approx(gini(counts)) and full.gini_sd == 0.0
    assert full.top10_share == 1.0  # 4 items shown, all in the top 10
    weights = np.array([1.0, 0.5, 1.0, 0.5, 0.25, 1.0])
    weighted = feedback.rarefied_concentration(items, 8, 6, 1, weights=weights)
    assert weighted.gini == pytest.approx(gini(np.bincount(items, weights, minlength=8)))
    assert feedback.rarefied_concentration(items, 8, size=7) is None  # too few slots
    # the mean over subsamples against a direct reference: every 3-subset, ranking.gini
    exact = np.mean([gini(np.bincount(items[list(c)], minlength=8))
                     for c in combinations(range(6), 3)])
    sample = feedback.rarefied_concentration(items, 8, size=3, repeats=4000, seed=3)
    assert sample.gini == pytest.approx(exact, abs=0.005) and sample.gini_sd > 0


def test_popularity_groups_rates_and_starvation():
    pop = {1: 100, 2: 50, 3: 40, 4: 10, 5: 9, 6: 8, 7: 0, 8: 0, 9: 0, 10: 0}
    groups = feedback.popularity_groups(pop, list(range(1, 11)))
    assert [i for i, g in groups.items() if g == "head"] == [1, 2, 3]
    assert sorted(i for i, g in groups.items() if g == "tail") == [8, 9, 10]
    rates = feedback.group_recommendation_rates([[1, 2, 4], [3, 8]], groups)
    assert rates == {"head": 1.0, "mid": pytest.approx(1 / 4), "tail": pytest.approx(1 / 3)}
    s = feedback.starvation(rates, 1.3)
    assert s["head_tail_ratio"] == pytest.approx(3.0) and s["starved"]
    assert feedback.starvation({"head": 0.5, "tail": 0.5})["starved"] is False
    assert feedback.starvation({"head": 0.5, "tail": 0.0}) == {
        "head_tail_ratio": None, "ci_low": None, "ci_high": None, "starved": True,
        "limit": 1.3, "reason": "no tail item was recommended"}
    nothing = feedback.starvation({"head": 0.0, "tail": 0.0})
    assert not nothing["starved"] and nothing["reason"] == "nothing was recommended"


def test_head_tail_ratio_interval_matches_statsmodels_and_decides_starvation():
    from statsmodels.stats.proportion import confint_proportions_2indep

    # 30 of 100 head items shown, 10 of 100 tail items: ratio 3
    s = feedback.starvation({"head": 0.3, "tail": 0.1}, 1.3, {"head": 100, "tail": 100})
    ref = confint_proportions_2indep(30, 100, 10, 100, method="log", compare="ratio")
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(ref, rel=1e-6)
    assert s["head_tail_ratio"] == pytest.approx(3.0) and s["starved"]  # 1.55 > 1.3
    # the same ratio on 10-item groups: the interval reaches below the limit, not starved
    small = feedback.starvation({"head": 0.3, "tail": 0.1}, 1.3, {"head": 10, "tail": 10})
    assert small["head_tail_ratio"] == pytest.approx(3.0) and small["ci_low"] < 1.3
    assert not small["starved"]
    none_shown = feedback.starvation({"head": 0.0, "tail": 0.2}, 1.3, {"head": 5, "tail": 5})
    assert none_shown["head_tail_ratio"] == 0.0 and none_shown["ci_low"] is None
    assert not none_shown["starved"]


def test_spam_detectors_hand_computed():
    # with n users the largest z is at most (n - 1) / sqrt(n): 2.85 for 10, so 3-sigma can
    # never flag anyone in a group of 10; with 20 it can
    assert not spam.three_sigma(pd.Series([10.0] * 9 + [100])).any()
    assert spam.three_sigma(pd.Series([10.0] * 19 + [100])).tolist() == [False] * 19 + [True]
    z = spam.robust_z(pd.Series([1.0, 2, 3, 4, 100]))
    # median 3, MAD median(|-2,-1,0,1,97|) = 1 -> z = 0.6745 * (x - 3)
    assert z.tolist() == pytest.approx([0.6745 * v for v in (-2, -1, 0, 1, 97)])
    ratings = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [7, 7, 8], "rating": [5, 1, 3],
                            "ts": pd.to_datetime(["2024-01-01T00:00:10Z",
                                                  "2024-01-01T00:00:20Z",
                                                  "2024-01-01T00:02:00Z"])})
    # item 7 mean 3, 2 ratings: user 1 |5-3|/2 = 1, user 2 1; item 8: user 3 0
    assert spam.rdma(ratings).to_dict() == {1: 1.0, 2: 1.0, 3: 0.0}
    assert spam.burst_rate(ratings).to_dict() == {1: 1, 2: 1, 3: 1}
    # DegSim, k=1: users 1 and 2 rated {7}, user 3 {8}: 1 and 2 are copies, 3 alone
    assert spam.degsim(ratings, k=1).to_dict() == {1: 1.0, 2: 1.0, 3: 0.0}
    assert spam.precision_recall({1, 2}, {2, 3}) == (0.5, 0.5)
    assert spam.precision_recall(set(), set()) == (1.0, 1.0)


def test_spam_combined_flags_a_push_attack_not_heavy_honest_users():
    rng = np.random.default_rng(0)
    rows = []
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    for u in range(100):  # honest: few ratings spread out, agreeing with item quality
        for _ in range(rng.integers(3, 8) if u != 0 else 60):  # user 0: honest but heavy
            item = int(rng.integers(1, 50))
            rows.append((u, item, int(np.clip(round(3 + (item % 3) - 1 + rng.normal(0, .5)),
                                               1, 5)), t0 + pd.Timedelta(hours=rng.random() * 24)))
    for bot in (1000, 1001, 1002):  # push item 99 with 5s in a burst, filler at random
        for j in range(30):
            item = 99 if j < 10 else int(rng.integers(1, 50))
            rows.append((bot, item, 5 if item == 99 else int(rng.integers(1, 6)),
                         t0 + pd.Timedelta(seconds=j)))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "ts"])
    flags = spam.detect(frame)
    assert set(flags.index[flags["combined"]]) == {1000, 1001, 1002}
    assert bool(flags.loc[0, "robust_count"]) and not bool(flags.loc[0, "combined"])
    assert spam.detect(frame.iloc[:0]).empty


def test_two_proportion_z_matches_scipy_chi2():
    r = abtest.two_proportion_z(120, 1000, 90, 1000)
    table = np.array([[120, 880], [90, 910]])
    chi2, p, *_ = stats.chi2_contingency(table, correction=False)
    assert r["z"] ** 2 == pytest.approx(chi2)
    assert r["p_value"] == pytest.approx(p)
    assert r["diff"] == pytest.approx(0.03)
    assert r["ci_low"] < r["diff"] < r["ci_high"]


def test_wilson_and_mean_ci_match_scipy():
    lo, hi = abtest.proportion_ci(30, 100)
    ref = stats.binomtest(30, 100).proportion_ci(0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    x = [1.0, 2.0, 3.0, 4.0]
    ref2 = stats.t.interval(0.95, 3, loc=np.mean(x), scale=stats.sem(x))
    assert abtest.mean_ci(x) == pytest.approx(ref2)


def test_srm_matches_scipy_chisquare():
    r = abtest.sample_ratio_mismatch([5200, 4800], [0.5, 0.5])
    ref = stats.chisquare([5200, 4800], [5000, 5000])
    assert r["chi2"] == pytest.approx(ref.statistic) and r["p_value"] == pytest.approx(
        ref.pvalue)
    assert r["mismatch"]
    assert not abtest.sample_ratio_mismatch([505, 495], [0.5, 0.5])["mismatch"]
    # a split of 1.0: every user on A is as expected, any on B is a mismatch
    assert not abtest.sample_ratio_mismatch([500, 0], [1.0, 0.0])["mismatch"]
    assert abtest.sample_ratio_mismatch([500, 3], [1.0, 0.0])["mismatch"]
    three = abtest.sample_ratio_mismatch([300, 330, 0], [0.5, 0.5, 0.0])
    assert three["p_value"] == pytest.approx(stats.chisquare([300, 330]).pvalue)


def test_ops_measures():
    assert ops.latency_percentiles([1, 2, 3, 4, 5]) == {"p50": 3.0, "p95": pytest.approx(4.8),
                                                        "p99": pytest.approx(4.96)}
    assert ops.latency_percentiles([])["p50"] is None
    assert ops.uptime([True, True, False, True]) == 0.75 and ops.uptime([]) is None
    # PSI hand case: shares (0.5, 0.5) -> (0.25, 0.75)
    want = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert ops.psi([50, 50], [25, 75]) == pytest.approx(want)
    assert ops.psi([1, 2], [1, 2]) == pytest.approx(0.0)
    train, cur = ops.popularity_bins([10, 5, 1, 0], [0, 1, 5, 10], bins=2)
    assert train.tolist() == [15, 1] and cur.tolist() == [1, 15]


def test_spam_detect_samples_degsim_on_many_users_and_still_flags_the_loud_copies():
    rng = np.random.default_rng(5)
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    rows = [(u, int(i), int(rng.integers(1, 6)), t0 + pd.Timedelta(minutes=int(rng.integers(0,
                                                                                   600))))
            for u in range(300) for i in rng.choice(500, 4, replace=False)]
    rows += [(1000 + b, i, 5, t0 + pd.Timedelta(seconds=i)) for b in range(5) for i in range(40)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "ts"])
    flags = spam.detect(frame, sample=50)
    assert flags["degsim"].notna().sum() < len(flags)  # sampled
    assert set(flags.index[flags["combined"]]) == set(range(1000, 1005))


def _window_ratings(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    return pd.DataFrame([(u, i, r, t0 + pd.Timedelta(minutes=n)) for n, (u, i, r)
                         in enumerate(rows)], columns=["user_id", "item_id", "rating", "ts"])


def test_pushed_items_poisson_scan_hand_computed():
    # past: 5-star ratings of items 1 (90), 2 (9), none of 3; add-one shares over the 3 items
    past = pd.DataFrame({"item_id": [1] * 90 + [2] * 9 + [3] * 4,
                         "rating": [5] * 99 + [2] * 4})
    # window: 20 five-star ratings: item 1 by 14 users, item 3 by 4 users, item 2 by 2
    rows = [(u, 1, 5) for u in range(14)] + [(100 + u, 3, 5) for u in range(4)] + [
        (200, 2, 5), (201, 2, 5), (300, 2, 1)]
    out = spam.pushed_items(_window_ratings(rows), past, 5)
    share = {1: 91 / 102, 2: 10 / 102, 3: 1 / 102}
    for item, x in {1: 14, 2: 2, 3: 4}.items():
        lam = 20 * share[item]
        tail = 1 - sum(math.exp(-lam) * lam**k / math.factorial(k) for k in range(x))
        assert out.loc[item, "expected"] == pytest.approx(lam)
        assert out.loc[item, "p_value"] == pytest.approx(tail)
        assert out.loc[item, "raters"] == x
    # item 3: p = 2.1e-5 < 0.01 / 3 and its excess is 95% of its raters; item 1 is as
    # expected, item 2 has too few raters
    assert out["pushed"].to_dict() == {1: False, 2: False, 3: True}
    # no past, no rate to test against; a stricter purity spares item 3 (lambda 0.196 > 0.04)
    assert not spam.pushed_items(_window_ratings(rows), None, 5)["pushed"].any()
    assert not spam.pushed_items(_window_ratings(rows), past, 5, purity=0.99)["pushed"].any()
    # ratings the recommender prompted do not count
    prompted = np.array([True] * 14 + [False] * 4 + [True] * 3)
    out = spam.pushed_items(_window_ratings(rows), past, 5, unprompted=~prompted)
    assert out["raters"].to_dict() == {3: 4} and bool(out.loc[3, "pushed"])


def test_combined_flags_a_quiet_push_and_a_flood_by_one_user():
    rng = np.random.default_rng(3)
    past = pd.DataFrame({"item_id": rng.integers(1, 200, 5000), "rating": 5})
    past = pd.concat([past, pd.DataFrame({"item_id": [999], "rating": [1]})])
    honest = [(u, int(i), int(rng.integers(1, 6))) for u in range(200)
              for i in rng.choice(np.arange(1, 200), 5, replace=False)]
    # four bots shaped like honest users (5 ratings, spread out) who all rate item 999 at 5
    quiet = [(1000 + b, int(i), int(rng.integers(1, 6))) for b in range(4)
             for i in rng.choice(np.arange(1, 200), 4, replace=False)]
    quiet += [(1000 + b, 999, 5) for b in range(4)]
    frame = _window_ratings(honest + quiet)
    frame["ts"] = frame["ts"].sample(frac=1, random_state=0).to_numpy()
    # one user posting 300 ratings in 30 seconds, values cycling 1..5 (tried from outside)
    t0 = frame["ts"].min()
    flood = pd.DataFrame({"user_id": 5000, "item_id": np.arange(300) % 200 + 1,
                          "rating": np.arange(300) % 5 + 1,
                          "ts": [t0 + pd.Timedelta(seconds=s / 10) for s in range(300)]})
    flags = spam.detect(pd.concat([frame, flood], ignore_index=True), past=past)
    assert set(flags.index[flags["target"]]) == {1000, 1001, 1002, 1003}
    assert set(flags.index[flags["flood"]]) == {5000}
    assert set(flags.index[flags["combined"]]) == {1000, 1001, 1002, 1003, 5000}
    assert flags.loc[1000, "pushed"] == 1 and not flags.loc[1000, "robust_count"]


@pytest.mark.parametrize("cells", [1 << 26, 1])
def test_burst_rate_is_the_groupby_of_floored_times(monkeypatch, cells):
    """Peak ratings per user within one bucket: the count table against pandas' floor and
    groupby (and the groupby itself, when the table is too large)."""
    monkeypatch.setattr(spam, "BURST_CELLS", cells)
    rng = np.random.default_rng(7)
    t0 = pd.Timestamp("2024-01-01T10:00:00", tz="UTC")
    frame = pd.DataFrame({"user_id": rng.integers(1, 40, 3000) * 1000,
                          "ts": t0 + pd.to_timedelta(rng.uniform(-3600, 3600, 3000), unit="s"),
                          "item_id": 1, "rating": 5})
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    for bucket in ("1min", "7s", "1h"):
        floored = frame["ts"].dt.floor(bucket)
        want = frame.groupby([frame["user_id"], floored]).size().groupby(level=0).max()
        got = spam.burst_rate(frame, bucket)
        assert got.to_dict() == want.to_dict()
        assert got.index.tolist() == want.index.tolist()


def test_homogenization_is_the_mean_jaccard_of_the_same_pairs():
    """Against Python sets over the same seeded pairs (every pair under `pairs`)."""
    rng = np.random.default_rng(12)
    for n_users, pairs in ((6, 2000), (300, 50)):
        users = rng.integers(10, 10 + n_users, 2000) * 3
        items = rng.integers(0, 40, 2000)
        uids = np.unique(users)
        sets = {u: set(items[users == u].tolist()) for u in uids}
        n = len(uids)
        if n * (n - 1) // 2 <= pairs:
            a, b = np.triu_indices(n, 1)
        else:
            r = np.random.default_rng(4)
            a = r.integers(0, n, pairs)
            b = (a + r.integers(1, n, pairs)) % n
        want = np.mean([len(sets[uids[i]] & sets[uids[j]]) / len(sets[uids[i]] | sets[uids[j]])
                        for i, j in zip(a, b, strict=True)])
        assert feedback.homogenization(users, items, pairs, seed=4) == pytest.approx(
            want, rel=1e-12)
