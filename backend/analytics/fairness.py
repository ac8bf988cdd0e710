"""Fairness section: exposure concentration and diversity parity of what each variant served.

The metric definitions live in `backend.ml.metrics`; this component selects each arm's
responses and groups users into segments (activity, gender, age band).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analytics.snapshot import (
    Fairness,
    MaxRequirement,
    MinRequirement,
    Requirements,
    VariantName,
)
from backend.analytics.window import ArmExposure, LogWindow, RecoLog
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics import fairness as fair_metrics
from backend.ml.metrics.ranking import gini, lorenz
from backend.ml.recommenders.base import item_features


def compute(cfg: AnalyticsSettings, reco: RecoLog, win: LogWindow,
            exposure: dict[VariantName, ArmExposure], items: pd.DataFrame,
            users: pd.DataFrame) -> dict[VariantName, Fairness]:
    """Fairness of every arm in `exposure` (its keys: the variants and "all")."""
    ild = list_diversity(reco, win, items)
    rating_counts = win.rating_upto.groupby("user_id").size()
    return {v: arm_fairness(cfg, reco, win.mask(reco, v), exp, ild, users, rating_counts)
            for v, exp in exposure.items()}


def list_diversity(reco: RecoLog, win: LogWindow, items: pd.DataFrame) -> np.ndarray:
    """Intra-list diversity per response (NaN outside the window or under 2 items).

    Vectorised form of ranking.intra_list_diversity: with unit feature rows f, the sum of
    pairwise cosines of a list is (|sum f|^2 - m) / 2, so ILD = 1 - (|S|^2 - m) /
    (m (m - 1)) with S = sum of the list's feature rows and m its items with features."""
    in_win, lengths, catalog = win.in_win, win.lengths, win.catalog
    out = np.full(len(reco), np.nan)
    if "genres" not in items or not in_win.any():
        return out
    feats = item_features(items, catalog).astype(np.float64)
    has = (np.abs(feats).sum(axis=1) > 0).astype(np.float64)
    picked = np.flatnonzero(in_win)
    keep = np.repeat(in_win, lengths)
    indptr = np.concatenate([[0], np.cumsum(lengths[picked])])
    lists = sp.csr_matrix((np.ones(int(indptr[-1])), win.item_idx[keep], indptr),
                          shape=(len(picked), len(catalog)))
    s = lists @ feats
    m = lists @ has
    sumsq = np.einsum("ij,ij->i", s, s)
    with np.errstate(divide="ignore", invalid="ignore"):
        ild = 1.0 - (sumsq - m) / (m * (m - 1))
    ild[m < 2] = np.nan
    out[picked] = ild
    return out


def arm_fairness(cfg: AnalyticsSettings, reco: RecoLog, mask: np.ndarray, exp: ArmExposure,
                 ild: np.ndarray, users: pd.DataFrame, rating_counts: pd.Series) -> Fairness:
    """Fairness of the responses in `mask`: coverage, Gini, top-10 share, exposure Gini, and
    the diversity of each user's lists (each user once) by segment, against the requirements."""
    counts = exp.counts
    coverage = float((counts > 0).mean()) if len(counts) else 0.0
    users_arr = reco.user[mask]
    div = ild[mask]
    ok = ~np.isnan(div)
    per_user = (pd.Series(div[ok]).groupby(users_arr[ok]).mean()
                if ok.any() else pd.Series(dtype=float))
    diversity = {dim: _mean_by(per_user, mapping)
                 for dim, mapping in _segments(per_user, users, rating_counts).items()}
    gaps = {dim: fair_metrics.parity_gap({k: v for k, v in d.items() if k != "unknown"})
            for dim, d in diversity.items()}
    parity = max(gaps.values(), default=0.0)
    return Fairness(
        coverage=coverage, gini=gini(counts), top10_share=fair_metrics.top_share(counts, 10),
        exposure_gini=gini(exp.weighted), exposure_lorenz=lorenz(exp.weighted),
        diversity=float(np.nanmean(div)) if ok.any() else None,
        diversity_by_segment=diversity, parity_gap=gaps,
        requirements=Requirements(
            coverage=MinRequirement(value=coverage, min=cfg.coverage_min,
                                    passed=coverage >= cfg.coverage_min),
            parity=MaxRequirement(value=parity, max=cfg.parity_gap_max,
                                  passed=parity < cfg.parity_gap_max)))


def _segments(per_user: pd.Series, users: pd.DataFrame, rating_counts: pd.Series,
              ) -> dict[str, dict[int, str]]:
    """Segment maps of the users in `per_user`; users without demographics (bots, new
    users) are in their activity segment and "unknown" for gender and age."""
    seg = fair_metrics.segments(users[users["user_id"].isin(per_user.index)],
                                dict(zip(rating_counts.index.tolist(), rating_counts.tolist(),
                                         strict=True)))
    known = set(seg.get("activity", {}))
    for u in per_user.index.difference(list(known)).tolist():
        seg.setdefault("activity", {})[int(u)] = fair_metrics.activity_segment(
            int(rating_counts.get(u, 0)))
        for dim in ("gender", "age"):
            if dim in seg:
                seg[dim][int(u)] = "unknown"
    return seg


def _mean_by(per_user: pd.Series, mapping: dict[int, str]) -> dict[str, float]:
    if per_user.empty:
        return {}
    keys = per_user.index.map(lambda u: mapping.get(int(u), "unknown"))
    return {str(k): float(v) for k, v in per_user.groupby(keys).mean().sort_index().items()}
