"""ALS beyond the shared contract (tests/unit/test_recommenders.py runs that for "als" too,
save/load round trip included): it learns the taste structure, and the seed is the only
source of randomness."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.ml.recommenders import ALS
from tests.unit.test_recommenders import GENRES, dataset


@pytest.fixture(scope="module")
def data():
    return dataset()


def taste_share(model: ALS, items: pd.DataFrame) -> np.ndarray:
    """Per user 1..80, the share of their top-10 unseen items in their taste genre."""
    genre = dict(zip(items["item_id"], (g[0] for g in items["genres"]), strict=True))
    recs = model.recommend_many(range(1, 81), 10)
    return np.array([np.mean([genre[i] == GENRES[u % 4] for i in r]) for u, r in recs.items()])


def test_learns_the_taste_genres(data):
    # four tastes: four factors can hold them (64 on 60 items would memorise the 8 picks)
    share = taste_share(ALS(factors=4).fit(*data), data[1])
    assert share.mean() >= 0.7  # chance is 1/4; at most 9 of 10 unseen are of the taste
    assert share.min() >= 0.5


def test_same_seed_same_factors_other_seed_other_factors(data):
    a, b = ALS(seed=7).fit(*data), ALS(seed=7).fit(*data)
    assert np.array_equal(a.user_factors, b.user_factors)
    assert np.array_equal(a.item_factors, b.item_factors)
    c = ALS(seed=8).fit(*data)
    assert not np.array_equal(a.item_factors, c.item_factors)


def test_threads_do_not_change_the_fit(data):
    one, two = ALS(num_threads=1).fit(*data), ALS(num_threads=2).fit(*data)
    assert np.array_equal(one.user_factors, two.user_factors)


def test_confidence_is_alpha_times_the_weights_without_zeros():
    frame = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [1, 2, 2],
                          "ts": pd.Timestamp("2024-01-01", tz="UTC"),
                          "rating": [5.0, 1.0, np.nan], "watched": [True, False, True]})
    model = ALS(factors=2, iterations=1, alpha=3.0).fit(frame)
    c = model.confidence(frame, np.array([0, 0, 1]), np.array([0, 1, 1]))
    # (1, 1): watch 1 + rating 5 -> 2; (1, 2): rating 1, no watch -> 0, dropped; (2, 2): 1
    assert c.nnz == 2
    assert np.allclose(c.toarray(), [[6.0, 0.0], [0.0, 3.0]])
