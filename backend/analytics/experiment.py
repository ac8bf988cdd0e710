"""Experiment (A/B) section: per-arm figures over users, the tests of B against A at user
level, the sample-ratio check against the split in force, the always-valid p-value, the
Bayesian summary, and the verdict with its fairness guardrail.

The unit is the user (what the router randomises): a user belongs to the one variant that
served them in the window (users served by two, after a split change, are left out); their
recommended items are those it showed them, their watches and ratings those they made from
its first recommendation on. Watch-through is the ratio
metric sum(watches) / sum(recommended) over an arm's users (delta method, lift.py); the
rating metric is each rater's mean rating, compared by Welch (see docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from backend.analytics.snapshot import (
    Arm,
    BayesSummary,
    Experiment,
    Fairness,
    LiftTest,
    SampleRatio,
    Sequential,
    VariantName,
    Winner,
)
from backend.analytics.window import LogWindow, RecoLog, naive_series
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics import abtest, lift

LOOKS = 12  # cumulative looks of the sequential test inside the window
Z95 = 1.959963984540054


@dataclass(frozen=True)
class ArmUsers:
    """One arm's users (sorted ids) and their figures, cumulative over the window's looks:
    row k holds what had happened by the end of look k (the last row: the whole window)."""

    ids: np.ndarray
    shown: np.ndarray  # (looks, users): items recommended to the user by the arm
    watches: np.ndarray  # (looks, users)
    rating_means: np.ndarray  # one per user who rated in the window
    ratings: int  # the ratings behind them

    def ratio(self, look: int = -1) -> lift.RatioStat:
        """Watch-through over the users recommended something by the end of `look`."""
        seen = self.shown[look] > 0
        return lift.RatioStat.of(self.watches[look][seen], self.shown[look][seen])


def arm_users(reco: RecoLog, win: LogWindow, variant: str, looks: int = LOOKS) -> ArmUsers:
    """`variant`'s users and their per-look figures, in one pass over the window. A user
    served by another arm too in the window (a split change moved them) belongs to neither:
    their behaviour mixes both. Watches and ratings count from the user's first
    recommendation by the arm in the window on (earlier ones answer something else)."""
    m = win.in_win & reco.arm(variant)
    others = np.unique(reco.user[win.in_win & ~reco.arm(variant)])
    ids = np.setdiff1d(np.unique(reco.user[m]), others)  # sorted
    if not len(ids):  # every user it served was served by another arm too
        empty = np.zeros((looks, 0))
        return ArmUsers(ids, empty, empty, np.zeros(0), 0)
    pos, ok = _positions(ids, reco.user[m])
    ts = reco.ts[m]
    shown = _cumulative(looks, len(ids), _look(win, ts, looks)[ok], pos[ok],
                        win.lengths[m][ok])
    first = np.full(len(ids), np.iinfo(np.int64).max)
    np.minimum.at(first, pos[ok], ts[ok].astype(np.int64))
    during = win.during(win.watch_ts)
    w_ts = win.watch_ts[during]
    wpos, wok = _positions(ids, win.watch["user_id"].to_numpy(dtype=np.int64)[during])
    wok &= w_ts.astype(np.int64) >= first[np.minimum(wpos, len(ids) - 1)]
    watches = _cumulative(looks, len(ids), _look(win, w_ts, looks)[wok], wpos[wok], None)
    rated = win.rating_in
    means, count = pd.Series(dtype=float), 0
    if len(rated):
        rpos, rok = _positions(ids, rated["user_id"].to_numpy(dtype=np.int64))
        r_ts = naive_series(rated["ts"]).astype(np.int64)
        rok &= r_ts >= first[np.minimum(rpos, len(ids) - 1)]
        means, count = rated[rok].groupby("user_id")["rating"].mean(), int(rok.sum())
    return ArmUsers(ids, shown, watches, means.to_numpy(dtype=float), count)


def _positions(ids: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's index in the sorted, non-empty `ids`, and whether it is there at all."""
    pos = np.searchsorted(ids, users)
    return pos, (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == users)


def _look(win: LogWindow, ts: np.ndarray, looks: int) -> np.ndarray:
    """The look (0-based) during which each time in the window falls."""
    step = win.length / looks
    return np.clip((ts - win.start) // step, 0, looks - 1).astype(np.int64)


def _cumulative(looks: int, users: int, look: np.ndarray, pos: np.ndarray,
                weights: np.ndarray | None) -> np.ndarray:
    """(looks, users) sums of `weights` (counts without), cumulative over the looks."""
    grid = np.bincount(look * users + pos, weights=weights, minlength=looks * users)
    return grid.astype(float).reshape(looks, users).cumsum(axis=0)


def compute(cfg: AnalyticsSettings, split: float, reco: RecoLog, win: LogWindow,
            fairness: dict[VariantName, Fairness],
            split_changes: Sequence[pd.Timestamp] = ()) -> Experiment:
    """Every arm's figures; with arms A and B, the tests of B against A and the verdict
    (`split`: A's share in force; `split_changes`: when it changed; `fairness` holds each
    variant's guardrails)."""
    arms: dict[VariantName, Arm] = {}
    users: dict[VariantName, ArmUsers] = {}
    for v in win.variants:
        u = users[v] = arm_users(reco, win, v)
        r = u.ratio()
        se = (r.variance / r.n) ** 0.5 if r.n >= 2 else None
        wt = r.mean if r.d.sum else None
        ratings_ci = abtest.mean_ci(u.rating_means.tolist())
        arms[v] = Arm(
            requests=int((win.in_win & reco.arm(v)).sum()), users=len(u.ids),
            recommended_items=int(u.shown[-1].sum()), watches=int(u.watches[-1].sum()),
            watch_through=wt,
            watch_through_ci=(None, None) if se is None or wt is None else
            (wt - Z95 * se, wt + Z95 * se),
            ratings=u.ratings,
            mean_rating=float(u.rating_means.mean()) if len(u.rating_means) else None,
            mean_rating_ci=ratings_ci)
    if not {"A", "B"} <= set(arms):
        return Experiment(arms=arms)
    a, b = users["A"], users["B"]
    wt_test = lift_test("watch-through", a.ratio(), b.ratio(), cfg.alpha)
    rating_test = lift_test("mean rating", lift.MeanStat.of(a.rating_means),
                            lift.MeanStat.of(b.rating_means), cfg.alpha)
    srm = sample_ratio(win, len(a.ids), len(b.ids), split, split_changes)
    seq = sequential(cfg, a, b)
    post = lift.bayesian(a.ratio(), b.ratio(), relative=True)
    bayes = BayesSummary(chance_to_win=post.chance_to_win, risk_a=post.risk_control,
                         risk_b=post.risk_treatment)
    return Experiment(arms=arms, watch_through_test=wt_test, rating_test=rating_test, srm=srm,
                      sequential=seq, bayes=bayes,
                      winner=verdict(cfg, wt_test, srm, seq, fairness))


def sample_ratio(win: LogWindow, users_a: int, users_b: int, split: float,
                 split_changes: Sequence[pd.Timestamp]) -> SampleRatio:
    """Users per arm against the split in force; not checked over a window the split changed
    in (its users came under two allocations, which one split cannot describe)."""
    start, end = pd.Timestamp(win.start, tz="UTC"), pd.Timestamp(win.end, tz="UTC")
    changed = [t for t in split_changes if start <= t < end]
    if changed:
        return SampleRatio(chi2=None, p_value=None, mismatch=False, split=split,
                           reason=f"not checked: the split changed at {max(changed)} inside "
                                  "this window")
    return SampleRatio.model_validate(
        abtest.sample_ratio_mismatch([users_a, users_b], [split, 1 - split]) | {"split": split})


def lift_test(metric: str, a: lift.Stat, b: lift.Stat, alpha: float) -> LiftTest:
    """The fixed-horizon test of B against A, absolute and relative."""
    absolute = lift.fixed_horizon(a, b, relative=False, alpha=alpha)
    relative = lift.fixed_horizon(a, b, relative=True, alpha=alpha)
    return LiftTest(metric=metric, diff=absolute.estimate, ci_low=absolute.ci_low,
                    ci_high=absolute.ci_high, relative=relative.estimate,
                    relative_ci_low=relative.ci_low, relative_ci_high=relative.ci_high,
                    p_value=absolute.p_value, reason=absolute.reason)


def verdict(cfg: AnalyticsSettings, wt_test: LiftTest, srm: SampleRatio,
            seq: Sequential, fairness: dict[VariantName, Fairness]) -> Winner:
    """The leader wins once the always-valid p is under alpha (the sign of the confidence
    sequence's running intersection then says who leads), the split holds and the leader
    meets its fairness requirements (missing figures fail); else the reason says which
    condition holds it back."""
    if wt_test.diff is None:
        return Winner(variant=None, reason="not enough data", leader=None)
    p = seq.p_value
    significant = p is not None and p < cfg.alpha
    if significant and seq.ci_low is not None and seq.ci_low > 0:
        leader = "B"
    elif significant and seq.ci_high is not None and seq.ci_high < 0:
        leader = "A"
    else:
        leader = "B" if wt_test.diff > 0 else "A"
    checks = fairness.get(leader)
    failed = checks.requirements.failed() if checks is not None else ["no fairness figures"]
    if not significant:
        variant, reason = None, "not significant yet (always-valid p >= alpha)"
    elif srm.mismatch:
        variant, reason = None, "sample ratio mismatch: the split is broken"
    elif failed:
        variant, reason = None, f"{leader} leads but fails a fairness guardrail"
    else:
        variant, reason = leader, "significant and within the fairness guardrails"
    return Winner(variant=variant, reason=reason, leader=leader)


def sequential(cfg: AnalyticsSettings, a: ArmUsers, b: ArmUsers) -> Sequential:
    """The always-valid p-value of the relative watch-through lift over users, read at each
    look inside the window (a look sees only what had happened by its end): the running
    minimum of the p-values and the running intersection of the intervals, so it may be
    read at any look."""
    ps: list[float | None] = []
    low, high = -math.inf, math.inf
    for k in range(len(a.shown)):
        look = lift.always_valid(a.ratio(k), b.ratio(k), relative=True, alpha=cfg.alpha,
                                 tuning=cfg.sequential_tuning)
        ps.append(look.p_value)
        if look.ci_low is not None and look.ci_high is not None:
            low, high = max(low, look.ci_low), min(high, look.ci_high)
    series = lift.running_min(ps)
    return Sequential(p_value=series[-1] if series else None, series=series,
                      ci_low=low if math.isfinite(low) else None,
                      ci_high=high if math.isfinite(high) else None)
