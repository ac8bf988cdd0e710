"""Drift section: the window against everything before it (the training window), as the
Population Stability Index of the rating histogram and of traffic per popularity decile."""

from __future__ import annotations

import numpy as np

from backend.analytics.snapshot import Drift
from backend.analytics.window import LogWindow, positions
from backend.ml.metrics import ops


def compute(win: LogWindow) -> Drift:
    """Rating and item-popularity PSI (None when the window or its past has no events)."""
    rating, r_ts, catalog = win.rating, win.rating_ts, win.catalog
    before, now = r_ts < win.start, win.during(r_ts)
    values = rating["rating"].to_numpy(dtype=np.int64) if len(rating) else \
        np.zeros(0, np.int64)
    hist_train = np.bincount(values[before], minlength=6)[1:6]
    hist_now = np.bincount(values[now], minlength=6)[1:6]
    items = np.concatenate([win.watch["item_id"].to_numpy(dtype=np.int64),
                            rating["item_id"].to_numpy(dtype=np.int64)])
    ts = np.concatenate([win.watch_ts, r_ts])
    idx, known = positions(catalog, items)
    idx, ts = idx[known], ts[known]
    train = np.bincount(idx[ts < win.start], minlength=len(catalog))
    cur = np.bincount(idx[win.during(ts)], minlength=len(catalog))
    e, a = ops.popularity_bins(train.tolist(), cur.tolist())
    return Drift(
        rating_psi=(ops.psi(hist_train.tolist(), hist_now.tolist())
                    if hist_now.sum() and hist_train.sum() else None),
        popularity_psi=ops.psi(e.tolist(), a.tolist()) if cur.sum() and train.sum() else None,
        rating_hist_train=hist_train.tolist(), rating_hist_now=hist_now.tolist())
