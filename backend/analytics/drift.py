"""Drift section: the window against everything before it (the training window), as the
Population Stability Index of the rating histogram and of traffic per popularity decile,
over all traffic and per variant (the window's events by the users each variant served)."""

from __future__ import annotations

import numpy as np

from backend.analytics.snapshot import Drift, VariantDrift
from backend.analytics.window import LogWindow, positions
from backend.ml.metrics import ops

RATING_BINS = 5
POPULARITY_BINS = 10


def _psi(train: np.ndarray, now: np.ndarray, bins: int) -> float | None:
    """The PSI, or None when the counts cannot tell a shift from noise."""
    if not ops.psi_supported(bins, float(train.sum()), float(now.sum())):
        return None
    return ops.psi(train.tolist(), now.tolist())


def arm_codes(win: LogWindow, users: np.ndarray) -> np.ndarray:
    """Per user id: the index in `win.variants` of their arm (-1: served by none), by a
    lookup in the arms' sorted users rather than an `isin` per variant."""
    arm = win.arm if win.arm.index.is_monotonic_increasing else win.arm.sort_index()
    ids = arm.index.to_numpy(dtype=np.int64)
    if not len(ids):
        return np.full(len(users), -1, np.int64)
    code = np.searchsorted(np.asarray(win.variants, dtype=object), arm.to_numpy())
    pos, known = positions(ids, users)
    return np.where(known, code[np.where(known, pos, 0)], -1)


def compute(win: LogWindow) -> Drift:
    """Rating and item-popularity PSI, all traffic and per variant."""
    rating, r_ts, catalog = win.rating, win.rating_ts, win.catalog
    before, now = r_ts < win.start, win.during(r_ts)
    values = rating["rating"].to_numpy(dtype=np.int64) if len(rating) else \
        np.zeros(0, np.int64)
    r_users = rating["user_id"].to_numpy(dtype=np.int64) if len(rating) else values
    hist_train = np.bincount(values[before], minlength=6)[1:6]
    items = np.concatenate([win.watch["item_id"].to_numpy(dtype=np.int64),
                            rating["item_id"].to_numpy(dtype=np.int64)])
    users = np.concatenate([win.watch["user_id"].to_numpy(dtype=np.int64), r_users])
    ts = np.concatenate([win.watch_ts, r_ts])
    idx, known = positions(catalog, items)
    idx, ts, users = idx[known], ts[known], users[known]
    train = np.bincount(idx[ts < win.start], minlength=len(catalog))
    in_now = win.during(ts)

    def against_train(rating_now: np.ndarray, item_now: np.ndarray
                      ) -> tuple[np.ndarray, float | None, float | None]:
        hist = np.bincount(values[rating_now], minlength=6)[1:6]
        cur = np.bincount(idx[item_now], minlength=len(catalog))
        e, a = ops.popularity_bins(train.tolist(), cur.tolist(), bins=POPULARITY_BINS)
        return (hist, _psi(hist_train, hist, RATING_BINS), _psi(e, a, POPULARITY_BINS))

    hist_now, rating_psi, popularity_psi = against_train(now, in_now)
    by_variant = {}
    arm_of_rater, arm_of_user = arm_codes(win, r_users), arm_codes(win, users)
    for j, variant in enumerate(win.variants):
        r_mask, i_mask = now & (arm_of_rater == j), in_now & (arm_of_user == j)
        _, r_psi, p_psi = against_train(r_mask, i_mask)
        by_variant[variant] = VariantDrift(rating_psi=r_psi, popularity_psi=p_psi,
                                           ratings_now=int(r_mask.sum()),
                                           interactions_now=int(i_mask.sum()))
    return Drift(rating_psi=rating_psi, popularity_psi=popularity_psi,
                 rating_hist_train=hist_train.tolist(), rating_hist_now=hist_now.tolist(),
                 by_variant=by_variant)
