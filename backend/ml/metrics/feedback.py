"""Feedback-loop measures: popularity echo chamber (a concentration trend), user
homogenisation, and long-tail starvation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from backend.ml.indexing import incidence


@dataclass(frozen=True)
class Trend:
    slope: float
    ci_low: float
    ci_high: float
    windows: int
    detected: bool

    def as_dict(self) -> dict:
        return asdict(self)


def trend(values: Sequence[float], limit: float = 0.01, confidence: float = 0.95) -> Trend:
    """Least-squares slope of `values` against the window index 0..n-1, with the two-sided
    `confidence` interval slope +- t_{n-2} x SE (ordinary least squares; equals
    scipy.stats.linregress). The echo chamber is `detected` when the slope exceeds `limit`
    per window: concentration (Gini, top-10 share) rising while models retrain on traffic
    their own recommendations shaped (Chaney et al. 2018; Jiang et al. 2019)."""
    y = np.asarray(values, dtype=np.float64)
    n = len(y)
    if n < 2:
        return Trend(0.0, float("nan"), float("nan"), n, False)
    x = np.arange(n, dtype=np.float64)
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc**2).sum())
    if n == 2:
        return Trend(slope, float("nan"), float("nan"), n, slope > limit)
    resid = y - (y.mean() + slope * xc)
    se = float(np.sqrt((resid**2).sum() / (n - 2) / (xc**2).sum()))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 2)) * se
    return Trend(slope, slope - half, slope + half, n, slope > limit)


def homogenization(users: np.ndarray, items: np.ndarray, pairs: int = 2000,
                   seed: int = 0) -> float:
    """Mean Jaccard similarity |A ∩ B| / |A ∪ B| of the watched-item sets of randomly paired
    users (Chaney, Stewart & Engelhardt 2018, "How algorithmic confounding in recommendation
    systems increases homogeneity"), from (user, item) watch pairs; every pair of users when
    there are at most `pairs` of them."""
    if len(users) == 0:
        return 0.0
    uids, w = incidence(users, items)
    n = len(uids)
    if n < 2:
        return 0.0
    if n * (n - 1) // 2 <= pairs:
        a, b = np.triu_indices(n, 1)
    else:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, n, pairs)
        b = (a + rng.integers(1, n, pairs)) % n  # never the same user
    inter = np.asarray(w[a].multiply(w[b]).sum(axis=1)).ravel()
    size = np.diff(w.indptr)
    return float(np.mean(inter / (size[a] + size[b] - inter)))


def popularity_groups(popularity: Mapping[int, float], catalog: Sequence[int],
                      head: float = 0.3, tail: float = 0.3) -> dict[int, str]:
    """Head / mid / tail by popularity: the top `head` share of the catalog by interaction
    count, the bottom `tail` share, the rest mid (ties broken by item id, so the split is
    deterministic); items nobody interacted with have popularity 0 and fall in the tail
    (Abdollahpouri et al. 2019 use the same head/tail cut of the popularity curve)."""
    items = sorted(int(i) for i in catalog)
    order = sorted(items, key=lambda i: (-popularity.get(i, 0.0), i))
    n = len(order)
    n_head, n_tail = int(round(head * n)), int(round(tail * n))
    out = {}
    for rank, item in enumerate(order):
        out[item] = "head" if rank < n_head else ("tail" if rank >= n - n_tail else "mid")
    return out


def group_recommendation_rates(lists: Iterable[Sequence[int]], groups: Mapping[int, str],
                               ) -> dict[str, float]:
    """Share of each group's items recommended at least once (the milestone report's
    "recommendation rate" per popularity group)."""
    shown = {int(i) for recs in lists for i in recs}
    sizes: dict[str, int] = {}
    hits: dict[str, int] = {}
    for item, g in groups.items():
        sizes[g] = sizes.get(g, 0) + 1
        hits[g] = hits.get(g, 0) + (item in shown)
    return {g: hits[g] / sizes[g] for g in sorted(sizes)}


def starvation(rates: Mapping[str, float], max_ratio: float = 1.3) -> dict:
    """Head/tail ratio of recommendation rates; starvation when above `max_ratio` (an unseen
    tail with a seen head is an infinite ratio, reported as None and flagged)."""
    head, tail = rates.get("head", 0.0), rates.get("tail", 0.0)
    if tail > 0:
        flagged = head / tail > max_ratio
        ratio: float | None = head / tail
    else:
        ratio, flagged = None, head > 0
    return {"head_tail_ratio": ratio, "starved": bool(flagged), "limit": max_ratio}
