from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.data.synthetic import STAR_SHARES, Shape, activity, ratings


def test_the_generated_ratings_have_the_size_and_skew_asked_for():
    shape = Shape.scaled(200_000)
    frame = pd.concat(ratings(shape, seed=1, users_per_chunk=700), ignore_index=True)
    assert len(frame) == shape.ratings
    assert not frame.duplicated(["user_id", "item_id"]).any()  # one rating per (user, item)
    assert frame["user_id"].between(1, shape.users).all()
    assert frame["item_id"].between(1, shape.items).all()
    per_user = frame.groupby("user_id").size()
    assert per_user.min() >= shape.min_per_user and len(per_user) == shape.users
    # heavy-tailed activity: the mean well above the median, as MovieLens (154 / 70 at 25M)
    assert per_user.mean() > 1.5 * per_user.median()
    # popularity: the head items the most rated, far above the mean, most items below it
    per_item = frame.groupby("item_id").size()
    assert per_item.idxmax() <= 5 and per_item.max() > 10 * per_item.mean()
    assert per_item.median() < 0.6 * per_item.mean()
    shares = frame["rating"].value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(shares, STAR_SHARES / STAR_SHARES.sum(), atol=0.01)
    lo, hi = pd.Timestamp(shape.start, tz="UTC"), pd.Timestamp(shape.end, tz="UTC")
    assert frame["ts"].between(lo, hi).all()


def test_the_same_seed_gives_the_same_ratings():
    shape = Shape.scaled(20_000)
    a = pd.concat(ratings(shape, seed=5), ignore_index=True)
    b = pd.concat(ratings(shape, seed=5), ignore_index=True)
    pd.testing.assert_frame_equal(a, b)


def test_a_shape_that_cannot_be_generated_is_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="cannot give"):
        activity(Shape(users=100, items=1000, ratings=1000), rng)
    with pytest.raises(ValueError, match="cannot hold"):
        activity(Shape(users=100, items=100, ratings=20_000), rng)
