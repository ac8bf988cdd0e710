"""Answer noise: a Plackett-Luce sample over the ranking, checked against the distribution's
closed form; the same answer for a user until the model changes; served through VariantLogic
from the model's own candidates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from backend.ml.recommenders import ItemKNN
from backend.ml.recommenders.noise import candidates, plackett_luce
from backend.serving.variant import VariantLogic
from registry import open_registry
from tests.unit.test_recommenders import dataset

RANKED = list(range(100, 112))  # twelve items, best first


def test_temperature_zero_is_the_ranking():
    assert plackett_luce(RANKED, 5, 0.0, "v1/7") == RANKED[:5]


def test_one_users_answer_stays_until_the_model_changes():
    a = plackett_luce(RANKED, 5, 3.0, "v0001/7")
    assert a == plackett_luce(RANKED, 5, 3.0, "v0001/7") and len(set(a)) == 5
    assert set(a) <= set(RANKED)
    others = {tuple(plackett_luce(RANKED, 5, 3.0, f"v0002/{u}")) for u in range(50)}
    assert len(others) > 25  # a new version, or another user: another draw


@pytest.mark.parametrize("temperature", [0.7, 2.0, 5.0])
def test_draws_follow_the_plackett_luce_probabilities(temperature):
    """First two picks over 20,000 seeds against P(i, j) = w_i / W * w_j / (W - w_i),
    w_r = exp(-r / temperature), by a chi-square goodness-of-fit test."""
    n, m = 20_000, 4  # the first four ranks' pairs exactly; the rest pooled
    w = np.exp(-np.arange(len(RANKED)) / temperature)
    total = w.sum()
    expected: dict[tuple[int, int] | str, float] = {}
    for i in range(m):
        for j in range(m):
            if i != j:
                expected[(i, j)] = w[i] / total * w[j] / (total - w[i])
    expected["rest"] = 1 - sum(expected.values())  # type: ignore[arg-type]
    seen = dict.fromkeys(expected, 0)
    for s in range(n):
        first, second = (RANKED.index(x) for x in plackett_luce(RANKED, 2, temperature,
                                                                 f"v/{s}"))
        key = (first, second) if first < m and second < m else "rest"
        seen[key] += 1
    f_exp = np.array([expected[key] * n for key in expected])
    f_obs = np.array([seen[key] for key in expected])
    assert f_exp.min() >= 5
    assert stats.chisquare(f_obs, f_exp).pvalue > 1e-3


def test_candidates_reach_twice_k_at_most_one_hundred():
    assert [candidates(k) for k in (1, 10, 50, 100)] == [11, 20, 100, 100]


def test_the_variant_serves_a_draw_from_its_models_own_candidates(settings):
    registry = open_registry(settings, signer=True)
    model = ItemKNN().fit(*dataset())
    registry.promote("A", registry.register("A", model, {}, {}))
    plain, noisy = VariantLogic(registry, "A"), VariantLogic(registry, "A", temperature=4.0)
    users = [int(u) for u in model.user_ids[:20]]
    moved = 0
    for u in users:
        pool = model.recommend(u, candidates(3))
        got = noisy.recommend(u, 3)["items"]
        assert set(got) <= set(pool) and len(got) == 3 == len(set(got))
        assert got == noisy.recommend(u, 3)["items"]  # stable for the user
        assert plain.recommend(u, 3)["items"] == pool[:3]
        moved += got != pool[:3]
    assert moved > 0
