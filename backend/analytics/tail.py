"""Long-tail section: how much of the head, mid and tail of the popularity curve each variant
recommends, and whether the tail starves (`backend.ml.metrics.feedback.starvation`).

Popularity = watches and ratings up to the window's end; the head is the top `head_share`
of the catalog, the tail the bottom `tail_share` (ties broken by item id).
"""

from __future__ import annotations

import numpy as np

from backend.analytics.snapshot import GroupRates, Tail, VariantName
from backend.analytics.window import ArmExposure, LogWindow, positions
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics import feedback

GROUPS = ("head", "mid", "tail")


def compute(cfg: AnalyticsSettings, win: LogWindow, exposure: dict[VariantName, ArmExposure],
            ) -> dict[VariantName, Tail]:
    """Tail figures of every arm in `exposure` (its keys: the variants and "all")."""
    groups = popularity_groups(cfg, win)
    return {v: arm_tail(cfg, exp.counts, groups) for v, exp in exposure.items()}


def popularity_groups(cfg: AnalyticsSettings, win: LogWindow) -> np.ndarray:
    """0 head, 1 mid, 2 tail, per catalog position (see feedback.popularity_groups)."""
    catalog = win.catalog
    idx, known = positions(catalog, np.concatenate([
        win.watch_upto["item_id"].to_numpy(np.int64),
        win.rating_upto["item_id"].to_numpy(np.int64)]))
    popularity = np.bincount(idx[known], minlength=len(catalog)).astype(float)
    order = np.lexsort((catalog, -popularity))
    n = len(catalog)
    n_head = int(round(cfg.head_share * n))
    n_tail = int(round(cfg.tail_share * n))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return np.where(rank < n_head, 0, np.where(rank >= n - n_tail, 2, 1))


def arm_tail(cfg: AnalyticsSettings, counts: np.ndarray, groups: np.ndarray) -> Tail:
    """Share of each group's items recommended at least once, and the head/tail ratio."""
    shown = counts > 0
    rates = {name: float(shown[groups == g].mean()) if (groups == g).any() else 0.0
             for g, name in enumerate(GROUPS)}
    starved = feedback.starvation(rates, cfg.starvation_ratio)
    return Tail(rates=GroupRates(**rates), head_tail_ratio=starved["head_tail_ratio"],
                starved=starved["starved"], limit=starved["limit"])
