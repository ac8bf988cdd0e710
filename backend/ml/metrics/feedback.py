"""Feedback-loop measures: popularity echo chamber (a concentration trend), user
homogenisation, and long-tail starvation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from backend.ml.indexing import dense_index, incidence


@dataclass(frozen=True)
class Trend:
    slope: float | None  # None: fewer windows with data than the trend needs (`reason`)
    ci_low: float | None
    ci_high: float | None
    windows: int  # windows with data
    detected: bool
    reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def trend(values: Sequence[float | None], limit: float = 0.01, confidence: float = 0.95,
          min_windows: int = 3) -> Trend:
    """Least-squares slope of `values` against their window index (a None is a window without
    data: left out, the others keep their index), with the two-sided `confidence` interval
    slope +- t_{n-2} x SE (ordinary least squares; equals scipy.stats.linregress).

    Rising is `detected` only when the interval's lower bound is above `limit` per window,
    so noise around a flat series is not an echo chamber (concentration rising while models
    retrain on traffic their own recommendations shaped: Chaney et al. 2018; Jiang et al.
    2019). Under `min_windows` windows with data (at least 3, for an interval) there is no
    slope: "not enough data", with the count in `reason`."""
    y_all = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    keep = np.isfinite(y_all)
    x, y = np.flatnonzero(keep).astype(np.float64), y_all[keep]
    n, need = len(y), max(min_windows, 3)
    if n < need:
        return Trend(None, None, None, n, False,
                     f"not enough data: {n} of {need} windows with data")
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc**2).sum())
    resid = y - (y.mean() + slope * xc)
    se = float(np.sqrt((resid**2).sum() / (n - 2) / (xc**2).sum()))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 2)) * se
    return Trend(slope, slope - half, slope + half, n, slope - half > limit)


@dataclass(frozen=True)
class Concentration:
    """Gini and top-10 share of one window's exposure on rarefied samples: the mean and the
    standard deviation over the repeated subsamples."""

    gini: float
    gini_sd: float
    top10_share: float
    top10_sd: float


def rarefied_concentration(items: np.ndarray, n_items: int, size: int, repeats: int = 20,
                           weights: np.ndarray | None = None, seed: int = 0,
                           ) -> Concentration | None:
    """Concentration of exposure over `n_items` items (`items`: one position in 0..n_items-1
    per recommendation slot, `weights` its exposure, 1 when None) on `repeats` subsamples of
    `size` slots drawn without replacement.

    Gini as `ranking.gini` (RecBole's GiniIndex, never-shown items counted as zero), top-10
    share as `fairness.top_share`. Both grow as the number of slots falls (fewer draws leave
    more items at zero), so a quiet window looks concentrated. Rarefaction, as in ecology's
    species richness (Hurlbert 1971; Gotelli & Colwell 2001), compares windows at equal
    sampling effort (`backend.analytics.feedback.sample_sizes` picks `size`). None when the
    window has fewer than `size` slots."""
    items = np.asarray(items, dtype=np.int64)
    w = np.ones(len(items)) if weights is None else np.asarray(weights, dtype=np.float64)
    return rarefied_draws(len(items), lambda pick: (items[pick], w[pick]), n_items, size,
                          repeats, seed)


Take = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def rarefied_draws(slots: int, take: Take, n_items: int, size: int, repeats: int = 20,
                   seed: int = 0) -> Concentration | None:
    """`rarefied_concentration` over `slots` slots whose (item, weight) `take` reads by
    index: the same draws, without laying out every slot of a window to sample a few."""
    if size < 1 or slots < size or n_items < 1:
        return None
    rng = np.random.default_rng(seed)
    g, t = np.empty(repeats), np.empty(repeats)
    rank = np.arange(1, n_items + 1)
    for r in range(repeats):
        pick = rng.choice(slots, size, replace=False) if size < slots else np.arange(slots)
        items, weights = take(pick)
        counts = np.bincount(items, weights=weights, minlength=n_items)
        x = np.sort(counts[counts > 0])  # the zeros come first in the sorted catalog
        total = x.sum()
        g[r] = ((2 * rank[n_items - len(x):] - n_items - 1) * x).sum() / (n_items * total)
        t[r] = x[::-1][:10].sum() / total
    ddof = 1 if repeats > 1 else 0
    return Concentration(float(g.mean()), float(g.std(ddof=ddof)), float(t.mean()),
                         float(t.std(ddof=ddof)))


def homogenization(users: np.ndarray, items: np.ndarray, pairs: int = 2000,
                   seed: int = 0) -> float | None:
    """Mean Jaccard similarity |A ∩ B| / |A ∪ B| of the watched-item sets of randomly paired
    users (Chaney, Stewart & Engelhardt 2018, "How algorithmic confounding in recommendation
    systems increases homogeneity"), from (user, item) watch pairs; every pair of users when
    there are at most `pairs` of them. None under two users: no pair to compare."""
    if len(users) == 0:
        return None
    uids, user = dense_index(np.asarray(users, dtype=np.int64))
    n = len(uids)
    if n < 2:
        return None
    if n * (n - 1) // 2 <= pairs:
        a, b = np.triu_indices(n, 1)
    else:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, n, pairs)
        b = (a + rng.integers(1, n, pairs)) % n  # never the same user
    paired = np.zeros(n, bool)  # only the paired users' sets are built
    paired[a] = paired[b] = True
    keep = paired[user]
    rows, w = incidence(user[keep], np.asarray(items, dtype=np.int64)[keep])
    a, b = np.searchsorted(rows, a), np.searchsorted(rows, b)
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


def starvation(rates: Mapping[str, float], max_ratio: float = 1.3,
               sizes: Mapping[str, int] | None = None, confidence: float = 0.95) -> dict:
    """Head/tail ratio of recommendation rates (the share of each group's items shown).
    With `sizes` (items per group) the ratio gets Katz's log interval for a ratio of two
    independent proportions (Katz et al. 1978; statsmodels' `confint_proportions_2indep`,
    method "log"), an item shown or not being one trial, and starvation is when the
    interval lies above `max_ratio`; without, when the point does. Without a shown tail
    item the ratio has no value: starved when the head was shown (`reason` says so), not
    judged when nothing was shown; without a shown head item it is 0 with no interval."""
    head, tail = rates.get("head", 0.0), rates.get("tail", 0.0)
    if tail > 0:
        ratio = head / tail
        low = high = None
        if sizes is not None and head > 0:
            h, t = head * sizes["head"], tail * sizes["tail"]
            se = math.sqrt(1 / h - 1 / sizes["head"] + 1 / t - 1 / sizes["tail"])
            z = float(stats.norm.ppf(0.5 + confidence / 2))
            low, high = ratio * math.exp(-z * se), ratio * math.exp(z * se)
        starved = (low if low is not None else ratio) > max_ratio
        return {"head_tail_ratio": ratio, "ci_low": low, "ci_high": high, "starved": starved,
                "limit": max_ratio, "reason": None}
    reason = "no tail item was recommended" if head > 0 else "nothing was recommended"
    return {"head_tail_ratio": None, "ci_low": None, "ci_high": None, "starved": head > 0,
            "limit": max_ratio, "reason": reason}
