"""Long-tail section: how much of the head, mid and tail of the popularity curve each variant
recommends, and whether the tail starves (`backend.ml.metrics.feedback.starvation`).

Popularity = watches and ratings before the window (the training window: what the models
were fitted on), over the catalog as of the window's end; the head is the top `head_share`
of it, the tail the bottom `tail_share` (ties broken by item id). Items released later are
not in any group.
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
    return {v: arm_tail(cfg, exp, groups) for v, exp in exposure.items()}


def popularity_groups(cfg: AnalyticsSettings, win: LogWindow) -> np.ndarray:
    """0 head, 1 mid, 2 tail, -1 not yet released, per catalog position (see
    feedback.popularity_groups)."""
    catalog = win.catalog
    before = (win.watch_ts < win.start), (win.rating_ts < win.start)
    idx, known = positions(catalog, np.concatenate([
        win.watch["item_id"].to_numpy(np.int64)[before[0]],
        win.rating["item_id"].to_numpy(np.int64)[before[1]]]))
    popularity = np.bincount(idx[known], minlength=len(catalog)).astype(float)
    alive = win.existing(win.end)
    pos = np.flatnonzero(alive)
    order = pos[np.lexsort((catalog[pos], -popularity[pos]))]
    n = len(pos)
    n_head = int(round(cfg.head_share * n))
    n_tail = int(round(cfg.tail_share * n))
    rank = np.empty(len(catalog), dtype=np.int64)
    rank[order] = np.arange(n)
    return np.where(~alive, -1, np.where(rank < n_head, 0, np.where(rank >= n - n_tail, 2, 1)))


def arm_tail(cfg: AnalyticsSettings, exposure: ArmExposure, groups: np.ndarray) -> Tail:
    """Share of each group's items recommended at least once, each group's share of the
    position-weighted exposure, and the head/tail ratio of the rates with its interval
    (starved when the interval lies above `starvation_ratio`)."""
    shown = exposure.counts > 0
    rates = {name: float(shown[groups == g].mean()) if (groups == g).any() else 0.0
             for g, name in enumerate(GROUPS)}
    total = exposure.weighted[groups >= 0].sum()
    share = GroupRates(**{name: float(exposure.weighted[groups == g].sum() / total)
                          for g, name in enumerate(GROUPS)}) if total > 0 else None
    sizes = {name: int((groups == g).sum()) for g, name in enumerate(GROUPS)}
    starved = feedback.starvation(rates, cfg.starvation_ratio, sizes)
    return Tail(rates=GroupRates(**rates), exposure_share=share,
                head_tail_ratio=starved["head_tail_ratio"], ratio_ci_low=starved["ci_low"],
                ratio_ci_high=starved["ci_high"], starved=starved["starved"],
                limit=starved["limit"], reason=starved["reason"])
