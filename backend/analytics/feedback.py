"""Feedback-loop section: the echo chamber (concentration rising window after window) and
user homogenisation (Chaney et al. 2018), overall and per arm."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from backend.analytics.snapshot import Echo, EchoSeries, Trend
from backend.analytics.window import LogWindow, RecoLog
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics import feedback as loop_metrics
from backend.ml.metrics.fairness import top_share
from backend.ml.metrics.ranking import gini


def compute(cfg: AnalyticsSettings, reco: RecoLog, win: LogWindow) -> Echo:
    """Gini and top-10 share in each of the last `echo_windows` windows, and their trend;
    user homogenisation over all watches so far, overall and per arm."""
    n_win, n_cat, n_var = cfg.echo_windows, len(win.catalog), max(len(reco.names), 1)
    first = win.end - n_win * win.length
    valid = (reco.ts >= first) & (reco.ts < win.end)
    widx = np.zeros(len(reco), dtype=np.int64)
    widx[valid] = (reco.ts[valid] - first) // win.length
    resp_key = (reco.code.astype(np.int64) * n_win + widx) * n_cat  # per response
    sel = valid[win.row]
    key = resp_key[win.row[sel]] + win.item_idx[sel]
    grid = np.bincount(key, minlength=n_var * n_win * n_cat).reshape(n_var, n_win, n_cat)
    series = {}
    for v in [*win.variants, "all"]:
        g = grid.sum(axis=0) if v == "all" else grid[reco.names.index(v)]
        series[v] = _series(g, cfg.echo_slope_max)
    watch = win.watch_upto
    wu = watch["user_id"].to_numpy(np.int64)
    wi = watch["item_id"].to_numpy(np.int64)
    w_arm = pd.Series(wu).map(win.arm.map(reco.names.index)).fillna(-1).to_numpy(np.int64)
    return Echo(
        windows=n_win, variants=series, homogenization=loop_metrics.homogenization(wu, wi),
        homogenization_by_variant={
            v: loop_metrics.homogenization(wu[w_arm == c], wi[w_arm == c])
            for v, c in ((v, reco.names.index(v)) for v in win.variants)})


def _series(grid: np.ndarray, slope_max: float) -> EchoSeries:
    """One variant's concentration per window (rows of `grid`: item counts per window)."""
    active = grid.sum(axis=1) > 0
    ginis = [gini(r) if a else None for r, a in zip(grid, active, strict=True)]
    tops = [top_share(r) if a else None for r, a in zip(grid, active, strict=True)]
    return EchoSeries(gini=ginis, top10_share=tops,
                      gini_trend=trend([x for x in ginis if x is not None], slope_max),
                      top10_trend=trend([x for x in tops if x is not None], slope_max))


def trend(values: Sequence[float], slope_max: float) -> Trend:
    """The least-squares trend of `values` per window (`loop_metrics.trend`) as a model."""
    t = loop_metrics.trend(values, slope_max)
    return Trend(slope=t.slope, ci_low=t.ci_low, ci_high=t.ci_high, windows=t.windows,
                 detected=t.detected)
