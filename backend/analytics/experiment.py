"""Experiment (A/B) section: per-arm figures, the fixed-horizon tests, the sample-ratio check,
the always-valid sequential p-value, and the verdict with its fairness guardrail.

Attribution: a user belongs to the variant of their latest recommendation in the window;
the watch-through rate of an arm = watches by its users / items it recommended in the
window (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import pandas as pd

from backend.analytics.snapshot import (
    Arm,
    Experiment,
    Fairness,
    ProportionTest,
    SampleRatio,
    Sequential,
    VariantName,
    WelchTest,
    Winner,
)
from backend.analytics.window import NO_TIMES, LogWindow, RecoLog, naive_series
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics import abtest

LOOKS = 12  # cumulative looks of the sequential test inside the window


def compute(cfg: AnalyticsSettings, split: float, reco: RecoLog, win: LogWindow,
            fairness: dict[VariantName, Fairness]) -> Experiment:
    """Every arm's figures; with arms A and B, the tests of B against A and the verdict
    (`fairness` holds each variant's guardrails)."""
    watch_w, rating_w, arm = win.watch_in, win.rating_in, win.arm
    w_arm = watch_w["user_id"].map(arm).to_numpy()
    r_arm = rating_w["user_id"].map(arm).to_numpy()
    users_per_arm = arm.value_counts()
    values = rating_w["rating"].to_numpy(dtype=float)
    arms: dict[VariantName, Arm] = {}
    ratings_of: dict[VariantName, np.ndarray] = {}
    for v in sorted(set(arm.unique().tolist())):
        m = win.in_win & reco.arm(v)
        recommended = int(win.lengths[m].sum())
        watches = int((w_arm == v).sum())
        ratings = values[r_arm == v]
        ratings_of[v] = ratings
        arms[v] = Arm(
            requests=int(m.sum()), users=int(users_per_arm.get(v, 0)),
            recommended_items=recommended, watches=watches,
            watch_through=watches / recommended if recommended else None,
            watch_through_ci=abtest.proportion_ci(min(watches, recommended), recommended),
            ratings=len(ratings), mean_rating=float(ratings.mean()) if len(ratings) else None,
            mean_rating_ci=abtest.mean_ci(ratings))
    if not {"A", "B"} <= set(arms):
        return Experiment(arms=arms)
    a, b = arms["A"], arms["B"]
    wt_test = ProportionTest.model_validate(abtest.two_proportion_z(
        min(b.watches, b.recommended_items), b.recommended_items,
        min(a.watches, a.recommended_items), a.recommended_items))
    srm = SampleRatio.model_validate(abtest.sample_ratio_mismatch([a.users, b.users],
                                                                  [split, 1 - split]))
    seq = sequential(cfg, reco, win, watch_w, w_arm)
    return Experiment(
        arms=arms, watch_through_test=wt_test,
        rating_test=WelchTest.model_validate(abtest.welch_t(
            _floats(ratings_of["B"]), _floats(ratings_of["A"]))),
        srm=srm, sequential=seq, winner=verdict(cfg, wt_test, srm, seq, fairness))


def _floats(values: np.ndarray) -> Sequence[float]:
    """A 1-d array where a metric is annotated Sequence[float] (it reads any array)."""
    return cast("Sequence[float]", values)


def verdict(cfg: AnalyticsSettings, wt_test: ProportionTest, srm: SampleRatio,
            seq: Sequential, fairness: dict[VariantName, Fairness]) -> Winner:
    """The leader wins once the always-valid p is under alpha, the split holds and the
    leader meets its fairness requirements."""
    p = seq.p_value
    leader = "B" if wt_test.diff > 0 else "A"
    failed = fairness[leader].requirements.failed()
    if p is None or p >= cfg.alpha:
        variant, reason = None, "not significant yet (always-valid p >= alpha)"
    elif srm.mismatch:
        variant, reason = None, "sample ratio mismatch: the split is broken"
    elif failed:
        variant, reason = None, f"{leader} leads but fails a fairness guardrail"
    else:
        variant, reason = leader, "significant and within the fairness guardrails"
    return Winner(variant=variant, reason=reason, leader=leader)


def sequential(cfg: AnalyticsSettings, reco: RecoLog, win: LogWindow, watch_w: pd.DataFrame,
               w_arm: np.ndarray, looks: int = LOOKS) -> Sequential:
    """mSPRT p-value of the B - A watch-through difference over `looks` cumulative looks
    inside the window (so it can be read at any time during the window)."""
    start, lengths = win.start, win.lengths
    step = win.length / looks
    m = (reco.ts >= start) & (reco.ts < win.end)
    look = ((reco.ts[m] - start) // step).astype(np.int64)
    w_ts = naive_series(watch_w["ts"]) if len(watch_w) else NO_TIMES
    w_look = ((w_ts - start) // step).astype(np.int64) if len(w_ts) else \
        np.zeros(0, np.int64)
    n, s = {}, {}
    for v in ("A", "B"):
        arm_m = reco.arm(v)[m]
        n[v] = np.cumsum(np.bincount(look[arm_m], weights=lengths[m][arm_m],
                                     minlength=looks)[:looks])
        s[v] = np.cumsum(np.bincount(w_look[w_arm == v], minlength=looks)[:looks])
    diffs, variances = [], []
    for k in range(looks):
        na, nb = n["A"][k], n["B"][k]
        if na == 0 or nb == 0:
            diffs.append(0.0)
            variances.append(0.0)
            continue
        pa_, pb = min(s["A"][k], na) / na, min(s["B"][k], nb) / nb
        diffs.append(pb - pa_)
        variances.append(pa_ * (1 - pa_) / na + pb * (1 - pb) / nb)
    p = abtest.msprt_p_values(diffs, variances, cfg.msprt_tau2)
    return Sequential(p_value=p[-1] if p else None, series=p)
