"""Spam section: the rating-spam detectors (`backend.ml.metrics.spam`) over the window's
ratings; the users the combined flag catches go to the quarantine the retrain job reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import JsonValue

from backend.analytics.snapshot import Spam, SpamFlags, SpamUser
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics import spam as detectors

LOUDEST = 300  # raters listed with their features (the dashboard's scatter)


def compute(cfg: AnalyticsSettings, ratings: pd.DataFrame, past: pd.DataFrame | None = None,
            unprompted: np.ndarray | None = None, top: int = LOUDEST) -> Spam:
    """Flags of every detector, the three-sigma line, and the `top` loudest raters with
    every user the combined flag caught (their scores are the quarantine's evidence).
    `past`: the ratings before the window (the pushed-item test's base rate); `unprompted`:
    per rating, its item had not been recommended to its rater (only those count as a push:
    a recommendation explains a rating)."""
    flags = detectors.detect(ratings, cfg.spam_z, cfg.spam_bucket, past=past,
                             alpha=cfg.spam_alpha, min_raters=cfg.spam_min_raters,
                             purity=cfg.spam_purity, flood=cfg.spam_flood,
                             unprompted=unprompted)
    if flags.empty:
        return Spam(raters=0, flagged=SpamFlags(), three_sigma_line=None, users=[])
    ranked = flags.sort_values("count", ascending=False)
    loudest = ranked[ranked.index.isin(ranked.index[:top]) | ranked["combined"].astype(bool)]
    flagged = {c: sorted(int(u) for u in flags.index[flags[c].astype(bool)])
               for c in SpamFlags.model_fields}
    counts = flags["count"]
    histogram = counts.astype(int).value_counts().sort_index()
    return Spam(
        raters=len(flags), flagged=SpamFlags.model_validate(flagged),
        three_sigma_line=float(counts.mean() + 3 * counts.std(ddof=0)),
        robust_line=detectors.robust_limit(counts, cfg.spam_z),
        count_histogram=list(zip(histogram.index.to_numpy().tolist(),
                                 histogram.to_numpy().tolist(), strict=True)),
        users=[SpamUser(user_id=int(r["user_id"]), count=int(r["count"]), rdma=float(r["rdma"]),
                        degsim=None if pd.isna(r["degsim"]) else float(r["degsim"]),
                        burst=int(r["burst"]), pushed=int(r["pushed"]),
                        combined=bool(r["combined"]))
               for _, r in loudest.reset_index().iterrows()])


def evidence(section: Spam, window_end: str) -> dict[int, dict[str, JsonValue]]:
    """Per user the combined flag caught: the detectors that flagged them and their scores,
    as the quarantine keeps them."""
    scores = {u.user_id: u for u in section.users}
    out: dict[int, dict[str, JsonValue]] = {}
    for user in section.flagged.combined:
        by = [name for name in SpamFlags.model_fields
              if user in getattr(section.flagged, name) and name != "combined"]
        entry: dict[str, JsonValue] = {"detectors": list(by), "window_end": window_end}
        if (row := scores.get(user)) is not None:
            entry |= {"ratings": row.count, "rdma": row.rdma, "degsim": row.degsim,
                      "burst": row.burst, "pushed": row.pushed}
        out[user] = entry
    return out
