from __future__ import annotations

import numpy as np
import pandas as pd

from backend.core.settings import TrainSettings
from backend.ml.evaluation import build_interactions, evaluate, temporal_split
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
