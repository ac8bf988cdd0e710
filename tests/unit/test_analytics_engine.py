"""The snapshot engine agrees with the list-based metric functions on a small log."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from backend.analytics.engine import AnalyticsLogic, RecoLog
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics.fairness import top_share
from backend.ml.metrics.ranking import (
    catalog_coverage,
    exposure_counts,
    gini,
    intra_list_diversity,
)
from backend.ml.recommenders.base import item_features

END = pd.Timestamp("2024-03-01T12:00:00Z")
ITEMS = pd.DataFrame({"item_id": np.arange(1, 21),
                      "genres": [["Drama"], ["Comedy"], ["Action", "Drama"], ["Horror"]] * 5,
                      "year": [1990 + i for i in range(20)]})
USERS = pd.DataFrame({"user_id": np.arange(1, 41), "age": np.arange(1, 41) + 15,
                      "gender": ["F", "M"] * 20})


def make_log(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        user = int(rng.integers(1, 41))
        variant = "A" if user % 2 else "B"
        pool = np.arange(1, 11) if variant == "A" else np.arange(1, 21)
        items = rng.choice(pool, size=5, replace=False).tolist()
        ts = END - pd.Timedelta(minutes=float(rng.uniform(0, 120)))
        rows.append({"ts": ts, "user_id": user, "variant": variant, "items": items,
                     "latency_ms": float(rng.uniform(1, 20))})
    frame = pd.DataFrame(rows)
    table = pa.table({"ts": pa.array(frame["ts"].dt.as_unit("us")), "user_id": frame["user_id"],
                      "variant": frame["variant"], "latency_ms": frame["latency_ms"],
                      "items": pa.array(frame["items"], pa.list_(pa.int64()))})
    watch = pd.DataFrame({"ts": [END - pd.Timedelta(minutes=m) for m in (1, 2, 3, 70)],
                          "user_id": [1, 2, 3, 1], "item_id": [1, 2, 3, 4]})
    rating = pd.DataFrame({"ts": [END - pd.Timedelta(minutes=m) for m in (1, 2, 90)],
                           "user_id": [1, 2, 3], "item_id": [1, 2, 3], "rating": [5, 3, 4]})
    return frame, RecoLog.from_table(table), watch, rating


def test_snapshot_matches_list_metrics():
    frame, log, watch, rating = make_log()
    cfg = AnalyticsSettings(window_minutes=60, echo_windows=2)
    snap = AnalyticsLogic(cfg).snapshot(log, watch, rating, ITEMS, USERS, END)
    in_win = frame[frame["ts"] >= END - pd.Timedelta(minutes=60)]
    catalog = list(range(1, 21))
    feats = dict(zip(catalog, item_features(ITEMS, np.array(catalog)), strict=True))
    for v in ("A", "B"):
        lists = in_win.loc[in_win["variant"] == v, "items"].tolist()
        counts = exposure_counts(lists, catalog)
        got = snap.fairness[v]
        assert got.coverage == pytest.approx(catalog_coverage(lists, 20))
        assert got.gini == pytest.approx(gini(counts))
        assert got.top10_share == pytest.approx(top_share(counts))
        # the vectorised list diversity, averaged per user then over users
        per_user = in_win[in_win["variant"] == v].groupby("user_id")["items"].apply(
            lambda s: intra_list_diversity(s.tolist(), feats))
        assert got.diversity == pytest.approx(
            np.mean([intra_list_diversity([x], feats) for x in lists]))
        genders = USERS.set_index("user_id")["gender"]
        want = per_user.groupby(per_user.index.map(genders)).mean().to_dict()
        assert got.diversity_by_segment["gender"] == pytest.approx(want)
    assert snap.counts.recommendations == len(in_win)
    assert snap.counts.watches == 3 and snap.counts.ratings == 2
    # A only ever recommends items 1..10: half the catalog at most
    assert snap.fairness["A"].coverage <= 0.5 < snap.fairness["B"].coverage
    assert not snap.fairness["A"].requirements.coverage.passed
    assert snap.tail["A"].rates.tail < snap.tail["B"].rates.tail
    assert len(snap.echo.variants["all"].gini) == 2
    ab = snap.ab
    assert ab.arms["A"].watches == 1 + 1 and ab.arms["B"].watches == 1  # users 1,3 odd
    assert ab.srm is not None and ab.srm.p_value is not None and 0 <= ab.srm.p_value <= 1
    assert ab.winner is not None and ab.winner.variant is None
    assert snap.sla.latency_ms["A"].p50 is not None
    assert snap.drift.rating_hist_now == [0, 0, 1, 0, 1]


def test_empty_lake_gives_an_empty_but_valid_snapshot():
    table = pa.table({"ts": pa.array([], pa.timestamp("us", tz="UTC")),
                      "user_id": pa.array([], pa.int64()), "variant": pa.array([], pa.string()),
                      "latency_ms": pa.array([], pa.float64()),
                      "items": pa.array([], pa.list_(pa.int64()))})
    empty_w = pd.DataFrame({"ts": pd.Series([], dtype="datetime64[us, UTC]"),
                            "user_id": [], "item_id": []})
    empty_r = empty_w.assign(rating=[])
    snap = AnalyticsLogic(AnalyticsSettings()).snapshot(RecoLog.from_table(table), empty_w,
                                                        empty_r, ITEMS, USERS, END)
    assert snap.counts.recommendations == 0
    assert snap.fairness["all"].coverage == 0.0
    assert snap.ab.winner is None


def test_the_spam_section_computed_beside_the_others_is_the_one_computed_alone():
    from backend.analytics import spam
    from backend.analytics.window import LogWindow

    _, log, watch, rating = make_log(seed=4, n=600)
    cfg = AnalyticsSettings(window_minutes=60, echo_windows=2)
    snap = AnalyticsLogic(cfg).snapshot(log, watch, rating, ITEMS, USERS, END)
    win = LogWindow.of(log, watch, rating, ITEMS, cfg.window_minutes, END)
    alone = spam.compute(cfg, win.rating_in, win.rating_before[["item_id", "rating"]],
                         win.unprompted(log, win.rating_in))
    assert snap.spam == alone and snap.spam.raters == 2


def test_a_failing_section_fails_the_snapshot(monkeypatch):
    from backend.analytics import spam

    def broken(*args, **kwargs):
        raise ValueError("spam section failed")

    monkeypatch.setattr(spam, "compute", broken)
    _, log, watch, rating = make_log()
    with pytest.raises(ValueError, match="spam section failed"):
        AnalyticsLogic(AnalyticsSettings()).snapshot(log, watch, rating, ITEMS, USERS, END)
