"""The pre-promotion feedback-loop forecast tells a narrowing model from a steady one."""

from __future__ import annotations

import pandas as pd

from backend.core.settings import SimSettings, TrainSettings
from backend.ml.forecast import forecast_gini_slope
from backend.training.retrain import gate
from tests.unit.test_evaluation import metrics
from tests.unit.test_simulation import NOW, world


class _Fake:
    """Recommends k of the `width` most interacted items, rotated per user."""

    narrowing = False

    def fit(self, frame: pd.DataFrame, items, users):
        popular = frame.groupby("item_id").size().sort_values(ascending=False, kind="stable")
        order = popular.index.tolist() + [i for i in items["item_id"] if i not in popular]
        steps = frame["ts"].nunique() - 1  # the forecast adds one timestamp per step
        width = max(10, 80 - 15 * steps) if self.narrowing else 80
        self.pool = order[:width]
        return self

    def recommend_many(self, users, k):
        n = len(self.pool)
        return {u: [self.pool[(u * 7 + j) % n] for j in range(k)] for u in users}


class _Narrowing(_Fake):
    narrowing = True


def _run(model_cls):
    ratings, items, users = world()
    inter = ratings.assign(ts=pd.Timestamp(NOW), watched=True)
    return forecast_gini_slope(model_cls, inter, items, users, ratings,
                               SimSettings(rank=4, seed=1), steps=4, visits=60, k=5,
                               limit=0.01)


def test_narrowing_model_is_forecast_to_concentrate_and_refused():
    out = _run(_Narrowing)
    assert out.exceeds and out.slope > 0.05
    assert out.gini == sorted(out.gini)
    reasons = gate(metrics(0.2, coverage=0.5, gini=0.5), None, TrainSettings(), out)
    assert reasons and "forecast Gini slope" in reasons[0]


def test_steady_model_passes():
    out = _run(_Fake)
    assert not out.exceeds and out.slope <= 0.01 and len(out.gini) == 4
    assert gate(metrics(0.2, coverage=0.5, gini=0.5), None, TrainSettings(), out) == []


def test_the_forecast_sample_keeps_whole_users_the_simulated_ones_first():
    from backend.ml.forecast import user_sample

    frame = pd.DataFrame({"user_id": [u for u in range(1, 201) for _ in range(u % 5 + 1)]})
    frame["item_id"] = range(len(frame))
    keep = {3, 50, 199}
    out = user_sample(frame, keep, max_rows=150)
    assert len(out) <= 150 and keep <= set(out["user_id"])
    sizes = frame.groupby("user_id").size()
    assert (out.groupby("user_id").size() == sizes[out["user_id"].unique()]).all()  # whole
    assert len(out) > 140  # filled up to the budget, less at most one user's rows
    pd.testing.assert_frame_equal(out, user_sample(frame, keep, max_rows=150))  # seeded
    assert user_sample(frame, keep, None) is frame
    assert user_sample(frame, keep, 10**6) is frame
