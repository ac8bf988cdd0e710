"""One contract every recommender passes (after implicit's RecommenderBaseTestMixin)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.ml.recommenders import MODELS, DiversityKNN, ItemKNN, Recommender

GENRES = ["Action", "Comedy", "Drama", "Horror"]


def dataset(seed: int = 3):
    rng = np.random.default_rng(seed)
    n_users, n_items = 80, 60
    item_genre = np.arange(n_items) % 4
    rows = []
    for u in range(1, n_users + 1):
        taste = u % 4
        pool = np.flatnonzero(item_genre == taste) + 1
        others = np.flatnonzero(item_genre != taste) + 1
        picks = list(rng.choice(pool, size=6, replace=False)) + list(
            rng.choice(others, size=2, replace=False))
        for i, item in enumerate(picks):
            rows.append({"user_id": u, "item_id": int(item),
                         "ts": pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=u + i),
                         "rating": float(rng.integers(1, 6)), "watched": True})
    inter = pd.DataFrame(rows)
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 2),  # item 61 is brand new
                          "title": [f"m{i}" for i in range(1, n_items + 2)],
                          "year": 1990 + np.arange(n_items + 1) % 10,
                          "genres": [[GENRES[i % 4]] for i in range(n_items)] + [["Action"]]})
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 6),  # users 81..85: no history
                          "age": 20 + np.arange(n_users + 5) % 40,
                          "gender": ["F" if u % 2 else "M" for u in range(n_users + 5)]})
    return inter, items, users


@pytest.fixture(scope="module")
def data():
    return dataset()


@pytest.fixture(params=sorted(MODELS), scope="module")
def model(request, data) -> Recommender:
    return MODELS[request.param]().fit(*data)


def test_shapes_and_k(model, data):
    recs = model.recommend(1, k=10)
    assert len(recs) == 10 and len(set(recs)) == 10
    assert all(isinstance(i, int) for i in recs)
    assert set(recs) <= set(data[1]["item_id"])
    assert len(model.recommend(1, k=3)) == 3
    assert len(model.recommend(1, k=500)) <= 61 - 8  # never more than the unseen catalog


def test_no_seen_items(model, data):
    inter = data[0]
    for u in (1, 2, 3, 40):
        seen = set(inter.loc[inter.user_id == u, "item_id"])
        assert not seen & set(model.recommend(u, k=20))
    seen1 = set(inter.loc[inter.user_id == 1, "item_id"])
    assert len(model.recommend(1, k=61, exclude_seen=False)) >= len(seen1)


def test_deterministic(model, data):
    again = type(model)(**model.params).fit(*data)
    users = [1, 5, 9, 81, 999]
    assert model.recommend_many(users, 10) == again.recommend_many(users, 10)


def test_unknown_and_cold_users(model):
    for u in (81, 999_999):  # known demographics without history / entirely unknown
        recs = model.recommend(u, k=10)
        assert len(recs) == 10 and len(set(recs)) == 10


def test_recommend_many_matches_recommend(model):
    many = model.recommend_many([1, 2, 81], 5)
    assert many == {u: model.recommend(u, 5) for u in (1, 2, 81)}


def test_save_load_roundtrip(model, tmp_path):
    files = model.save(tmp_path)
    assert sorted(p.name for p in files) == ["model.json", "model.npz"]
    np.load(tmp_path / "model.npz", allow_pickle=False).close()  # pickle-free
    back = Recommender.load(tmp_path)
    assert type(back) is type(model) and back.params == model.params
    users = [1, 2, 3, 81, 12345]
    assert back.recommend_many(users, 10) == model.recommend_many(users, 10)


def test_new_item_can_be_recommended(data):
    knn = ItemKNN().fit(*data)
    action_fans = [u for u in range(4, 81, 4)]  # taste 0 == Action, like the new item 61
    hits = sum(61 in knn.recommend(u, k=10) for u in action_fans)
    assert hits > 0


def test_diversity_knobs_change_lists_at_run_time(data):
    b = DiversityKNN(tail_slots=0, exploration=0.0, mmr_lambda=1.0).fit(*data)
    a = ItemKNN().fit(*data)
    users = list(range(1, 41))
    assert b.recommend_many(users, 10) == a.recommend_many(users, 10)  # knobs off == A
    b.set_params(tail_slots=4, mmr_lambda=0.5)
    lists = b.recommend_many(users, 10)
    tail_items = set(b.item_ids[b.tail].tolist())
    assert all(len(set(r) & tail_items) >= 4 for r in lists.values())
    with pytest.raises(ValueError):
        b.set_params(neighbours=3)


def test_take_rows_is_scipys_row_indexing():
    import scipy.sparse as sp

    from backend.ml.recommenders.base import take_rows

    m = sp.random(30, 12, density=0.3, format="csr", dtype=np.float32, random_state=3)
    m.data[m.indptr[4]:m.indptr[5]] = 0  # an empty row
    m.eliminate_zeros()
    assert m.indptr[5] == m.indptr[4]
    for rows in ([5], [4], [7, 2, 7, 4, 29], list(range(30)), []):
        got, want = take_rows(m, np.array(rows, dtype=np.int64)), m[np.array(rows, dtype=int)]
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.array_equal(got.toarray(), want.toarray())


def test_top_k_gives_the_k_highest_finite_scores_best_first_ties_by_index():
    from backend.ml.recommenders.base import top_k

    rng = np.random.default_rng(4)
    for trial in range(300):
        n = int(rng.integers(1, 60))
        scores = rng.integers(0, 8, n).astype(float)  # many ties
        scores[rng.random(n) < rng.random()] = -np.inf  # seen items, sometimes most of them
        if trial % 7 == 0:
            scores[rng.integers(0, n)] = np.nan
        k = int(rng.integers(1, 15))
        got = top_k(scores, k)
        finite = np.flatnonzero(np.isfinite(scores))
        assert len(got) == min(k, len(finite))
        assert np.isfinite(scores[got]).all() and len(set(got.tolist())) == len(got)
        # nothing left out scores higher than the lowest picked
        rest = np.setdiff1d(finite, got)
        if len(got) and len(rest):
            assert scores[rest].max() <= scores[got].min()
        # best first, and equal scores in index order
        pairs = list(zip(-scores[got], got, strict=True))
        assert pairs == sorted(pairs)
