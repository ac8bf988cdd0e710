from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.core.settings import TrainSettings
from backend.ml.evaluation import (
    build_interactions,
    evaluate,
    finish_interactions,
    merge_partials,
    partial_interactions,
    temporal_split,
)
from backend.ml.recommenders import ItemKNN
from backend.ml.results import OfflineMetrics
from backend.training.retrain import gate
from tests.unit.test_recommenders import dataset

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def test_build_interactions_merges_and_quarantines():
    ratings = pd.DataFrame({"user_id": [1, 1, 2, 9], "item_id": [10, 10, 10, 10],
                            "rating": [2, 5, 3, 5],
                            "ts": [T0, T0 + pd.Timedelta(1, "h"), T0, T0]})
    watches = pd.DataFrame({"user_id": [1, 3], "item_id": [11, 10],
                            "ts": [T0 - pd.Timedelta(1, "h"), T0]})
    out = build_interactions(ratings, watches, quarantine={9})
    rows = {(r.user_id, r.item_id): r for r in out.itertuples()}
    assert set(rows) == {(1, 10), (1, 11), (2, 10), (3, 10)}  # user 9 quarantined
    assert rows[(1, 10)].rating == 5 and not rows[(1, 10)].watched  # last rating wins
    assert np.isnan(rows[(1, 11)].rating) and rows[(1, 11)].watched


def test_partials_of_any_split_merge_into_the_interactions_of_all_events():
    """What the retrain's Ray Data tasks rely on: reducing each block where it is read and
    merging the partials gives what all events at once give (the pandas reference below is
    written independently of the partials)."""
    rng = np.random.default_rng(3)
    n = 3000
    ratings = pd.DataFrame({"user_id": rng.integers(1, 40, n), "item_id": rng.integers(1, 60, n),
                            "rating": rng.integers(1, 6, n),
                            "ts": T0 + pd.to_timedelta(rng.integers(0, 10**6, n), "s")})
    watches = pd.DataFrame({"user_id": rng.integers(1, 40, n), "item_id": rng.integers(1, 60, n),
                            "ts": T0 + pd.to_timedelta(rng.integers(0, 10**6, n), "s")})
    whole = build_interactions(ratings, watches, quarantine={7})
    for pieces in (2, 7, 50):
        cut = [[f.iloc[idx] for idx in np.array_split(rng.permutation(len(f)), pieces)]
               for f in (ratings, watches)]
        parts = [merge_partials(pd.concat([partial_interactions(b) for b in blocks]))
                 for blocks in cut]
        merged = finish_interactions(merge_partials(pd.concat(parts)), {7})
        pd.testing.assert_frame_equal(merged, whole)
    # the reference: first time over both topics, the rating given last, watched at all
    last = ratings.sort_values(["ts", "rating"]).groupby(["user_id", "item_id"]).last()
    first = pd.concat([ratings, watches]).groupby(["user_id", "item_id"])["ts"].min()
    watched = set(zip(watches["user_id"], watches["item_id"], strict=True))
    for row in whole.itertuples():
        key = (row.user_id, row.item_id)
        assert row.ts == first[key] and row.watched == (key in watched)
        assert (np.isnan(row.rating) if key not in last.index
                else row.rating == last.loc[key, "rating"])
    assert 7 not in set(whole["user_id"]) and len(whole) == len(first.drop(7, level=0))


def test_temporal_split_holds_out_each_users_latest_fifth():
    frame = pd.DataFrame({"user_id": [1] * 10 + [2] * 4 + [3],
                          "item_id": list(range(10)) + list(range(4)) + [0],
                          "ts": [T0 + pd.Timedelta(i, "h") for i in range(10)]
                          + [T0 + pd.Timedelta(i, "h") for i in range(4)] + [T0]})
    train, test = temporal_split(frame, 0.2)
    assert sorted(test[test.user_id == 1]["item_id"]) == [8, 9]  # floor(10 * 0.2) = 2 latest
    assert test[test.user_id == 2].empty  # floor(4 * 0.2) = 0
    assert len(train) + len(test) == len(frame)
    assert (train.groupby("user_id")["ts"].max().reindex(test["user_id"]).to_numpy()
            <= test["ts"].to_numpy()).all()


@pytest.mark.parametrize("presorted", [True, False])
def test_temporal_split_is_the_per_user_definition_on_random_interactions(presorted):
    """Ties in time, users of 1 to 40 rows, shuffled or already in order: each user's last
    floor(n * fraction) rows by (time, item) are the test set, the rest train, in order."""
    rng = np.random.default_rng(3)
    n = 3000
    frame = pd.DataFrame({"user_id": rng.integers(1, 200, n),
                          "item_id": rng.permutation(n) + 1,  # unique: no full ties
                          "ts": T0 + pd.to_timedelta(rng.integers(0, 50, n), "h"),
                          "rating": rng.integers(1, 6, n).astype(float),
                          "watched": rng.random(n) < 0.5})
    if presorted:
        frame = frame.sort_values(["user_id", "ts", "item_id"]).reset_index(drop=True)
    train, test = temporal_split(frame, 0.3)
    want_train, want_test = [], []
    for _, rows in sorted(frame.groupby("user_id"), key=lambda g: g[0]):
        rows = rows.sort_values(["ts", "item_id"])
        cut = len(rows) - int(np.floor(len(rows) * 0.3))
        want_train.append(rows.iloc[:cut])
        want_test.append(rows.iloc[cut:])
    pd.testing.assert_frame_equal(train, pd.concat(want_train, ignore_index=True))
    pd.testing.assert_frame_equal(test, pd.concat(want_test, ignore_index=True))


def test_evaluate_reports_every_metric_in_range():
    inter, items, users = dataset()
    train, test = temporal_split(inter, 0.25)
    m = evaluate(ItemKNN().fit(train, items, users), train, test, k=5).model_dump()
    for key in ("ndcg", "recall", "map", "coverage", "gini", "ild", "aplt"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["users"] == test["user_id"].nunique() and m["novelty"] > 0 and m["k"] == 5


def metrics(ndcg: float, coverage: float = 0.3, gini: float = 0.8) -> OfflineMetrics:
    return OfflineMetrics(k=10, users=50, ndcg=ndcg, recall=0.1, map=0.1, coverage=coverage,
                          gini=gini, novelty=5.0, ild=0.5, aplt=0.2)


def test_gates():
    cfg = TrainSettings(ndcg_tolerance=0.01, min_coverage=0.1, max_gini=0.9)
    good = metrics(0.20)
    assert gate(good, None, cfg) == []
    assert gate(good, metrics(0.205), cfg) == []
    worse = gate(good, metrics(0.22), cfg)
    assert len(worse) == 1 and "NDCG" in worse[0]
    assert len(gate(metrics(0.2, coverage=0.05, gini=0.95), None, cfg)) == 2


def test_evaluation_over_a_sample_of_test_users_takes_the_same_users_for_every_model():
    inter = dataset()[0]
    train, test = temporal_split(inter, 0.3)
    n_test = test["user_id"].nunique()
    a = evaluate(ItemKNN().fit(train), train, test, 5, max_users=20)
    assert a.users == 20 and evaluate(ItemKNN().fit(train), train, test, 5).users == n_test
    assert evaluate(ItemKNN().fit(train), train, test, 5, max_users=20) == a  # same sample
    assert evaluate(ItemKNN().fit(train), train, test, 5, max_users=n_test + 5).users == n_test
    # the sample: a seeded uniform draw of the sorted test users, each evaluated on all its rows
    users = np.sort(test["user_id"].unique())
    drawn = users[np.sort(np.random.default_rng(0).choice(len(users), 20, replace=False))]
    assert evaluate(ItemKNN().fit(train), train, test[test["user_id"].isin(drawn)], 5) == a
