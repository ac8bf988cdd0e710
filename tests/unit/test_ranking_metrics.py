"""Metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.ml.metrics.ranking import (
    aplt,
    average_precision_at_k,
    catalog_coverage,
    exposure_counts,
    gini,
    intra_list_diversity,
    ndcg_at_k,
    novelty,
    recall_at_k,
)


def test_ndcg_hand_computed():
    # hits at ranks 1 and 3 of 3 relevant: DCG = 1 + 1/log2(4) = 1.5
    # IDCG = 1 + 1/log2(3) + 1/log2(4) = 2.1309
    assert ndcg_at_k([1, 9, 2, 8], {1, 2, 3}, k=4) == pytest.approx(1.5 / 2.130929753)
    assert ndcg_at_k([1, 2, 3], {1, 2, 3}, k=3) == pytest.approx(1.0)
    assert ndcg_at_k([7, 8], {1}, k=2) == 0.0
    assert ndcg_at_k([1], set(), k=1) == 0.0
    assert ndcg_at_k([9, 1], {1}, k=1) == 0.0  # cut at k


def test_recall_and_map_hand_computed():
    assert recall_at_k([1, 9, 2, 8], {1, 2, 3, 4}, k=4) == 0.5
    # AP: hits at 1 (P=1) and 3 (P=2/3); / min(3, 4) = (1 + 0.6667) / 3
    assert average_precision_at_k([1, 9, 2, 8], {1, 2, 3}, k=4) == pytest.approx(5 / 9)
    assert average_precision_at_k([9, 1], {1}, k=2) == 0.5


def test_coverage_and_gini():
    lists = [[1, 2], [1, 3]]
    assert catalog_coverage(lists, 6) == pytest.approx(0.5)
    counts = exposure_counts(lists, [1, 2, 3, 4, 5, 6])
    assert counts.tolist() == [2, 1, 1, 0, 0, 0]
    # sorted [0,0,0,1,1,2], n=6: sum (2i-7) x = (1*1 + 3*1 + 5*2) = 14; / (6*4) = 0.58333
    assert gini(counts) == pytest.approx(14 / 24)
    assert gini(np.ones(5)) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 10.0])) == pytest.approx(0.75)  # (n-1)/n for one item
    assert gini(np.zeros(3)) == 0.0


def test_gini_matches_mean_absolute_difference_definition():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, size=40).astype(float)
    mad = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    assert gini(x) == pytest.approx(mad)


def test_novelty_ild_aplt():
    pop = {1: 50, 2: 5}
    assert novelty([[1, 2]], pop, 100) == pytest.approx((1 + math.log2(20)) / 2)
    feats = {1: np.array([1.0, 0]), 2: np.array([0, 1.0]), 3: np.array([1.0, 0])}
    assert intra_list_diversity([[1, 2]], feats) == pytest.approx(1.0)
    assert intra_list_diversity([[1, 3]], feats) == pytest.approx(0.0)
    # list [1,2,3]: pairs (1,2)=1, (1,3)=0, (2,3)=1 -> mean distance 2/3
    assert intra_list_diversity([[1, 2, 3]], feats) == pytest.approx(2 / 3)
    assert aplt([[1, 2, 3, 4], [5, 6]], {3, 4, 5}) == pytest.approx((0.5 + 0.5) / 2)


def test_lorenz_curve_by_its_definition_and_against_gini():
    from backend.ml.metrics.ranking import lorenz

    # four items exposed 0, 1, 1, 2: the poorest quarter holds 0, half 1/4, three quarters 1/2
    assert lorenz(np.array([2, 0, 1, 1]), points=5) == pytest.approx([0, 0, 0.25, 0.5, 1])
    assert lorenz(np.zeros(3)) == [] and lorenz(np.array([])) == []
    rng = np.random.default_rng(7)
    counts = rng.zipf(1.6, 5000).astype(float)  # a long tail, as recommendations have
    curve = np.array(lorenz(counts, points=5001))
    area = float(((curve[1:] + curve[:-1]) / 2).sum() / 5000)  # trapezoids
    assert 1 - 2 * area == pytest.approx(gini(counts), abs=2e-3)
    assert np.all(np.diff(curve) >= 0) and curve[0] == 0 and curve[-1] == pytest.approx(1)
