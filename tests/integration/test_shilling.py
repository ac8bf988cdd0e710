"""A push attack in simulated traffic is flagged, the attackers are quarantined before the
retrain, and the target's rank in Model A drops back (the spam bench's code, one size)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.data.movielens import load
from backend.ml.evaluation import build_interactions
from backend.ml.metrics import spam
from backend.ml.recommenders import ItemKNN

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_spam", ROOT / "bench" / "spam.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_attack_flagged_quarantined_and_target_rank_restored(movielens_wheel):
    bench = _bench()
    ml = load(movielens_wheel.parent)
    base = ml.ratings[["user_id", "item_id", "rating", "ts"]]
    model = ItemKNN().fit(build_interactions(base, base.iloc[:0][["user_id", "item_id", "ts"]]),
                          ml.items, ml.users)
    humans = ml.users["user_id"].tolist()
    hour, sim = bench.hour_of_traffic(ml, model.recommend_many(humans, 40), 0.05, 8000, 7)
    truth = set(sim.bots.tolist()) & set(hour["user_id"].tolist())
    flags = spam.detect(hour, past=base)  # MovieLens: the lake's past
    flagged = set(flags.index[flags["combined"]].tolist())
    precision, recall = spam.precision_recall(flagged, truth)
    assert len(truth) >= 20 and precision >= 0.9 and recall >= 0.9, (precision, recall)

    probe = sorted(np.random.default_rng(7).choice(humans, 200, replace=False).tolist())
    targets = [int(t) for t in sim.targets]
    attacked_all = pd.concat([base, hour], ignore_index=True)
    before = bench.target_rank(base, ml, targets, probe)["median_rank"]
    attacked = bench.target_rank(attacked_all, ml, targets, probe)["median_rank"]
    cleaned = bench.target_rank(attacked_all[~attacked_all["user_id"].isin(flagged)], ml,
                                targets, probe)["median_rank"]
    assert attacked < before  # the attack works on an unprotected model...
    assert cleaned >= before - 0.25 * (before - attacked), (before, attacked, cleaned)
