"""Experiment section: per-arm figures over users, each treatment's user-level tests against
the control, the sample-ratio check against the allocation in force, the always-valid
p-values with Holm's correction, the Bayesian summary, guardrails and the verdict.

The unit is the user (what the router randomises). With an experiment running, the users
analysed are those who entered it in its current allocation epoch, from that epoch's start:
they were assigned under one set of weights, so the arms are comparable, and none of them
was served by another arm earlier in the experiment. Users who entered in earlier epochs are
summarised per epoch (users per arm, SRM). Without an
experiment, the window's users under the default split are analysed (users served by two
arms, after a split change, are left out).

A user's recommended items are those their arm showed them, their watches and ratings those
they made from its first recommendation on. Watch-through is the ratio metric
sum(watches) / sum(recommended) over an arm's users (delta method, lift.py); the rating
metric is each rater's mean rating, compared by Welch (see docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from backend.analytics.snapshot import (
    Arm,
    BayesSummary,
    Comparison,
    Cuped,
    EpochSummary,
    Experiment,
    Fairness,
    GuardrailCheck,
    LiftTest,
    SampleRatio,
    Sequential,
    VariantName,
    Winner,
)
from backend.analytics.window import LogWindow, RecoLog, naive, naive_series, positions
from backend.core.settings import AnalyticsSettings
from backend.ml.indexing import dense_index
from backend.ml.metrics import abtest, lift, ops
from registry.experiments import Experiment as ExperimentRecord
from registry.experiments import Guardrail

LOOKS = 12  # cumulative looks of the sequential test inside the span analysed
Z95 = 1.959963984540054
PRIMARY, SECONDARY = "watch-through", "mean rating"


@dataclass(frozen=True)
class ArmUsers:
    """One arm's users (sorted ids) and their figures, cumulative over the span's looks:
    row k holds what had happened by the end of look k (the last row: the whole span)."""

    ids: np.ndarray
    shown: np.ndarray  # (looks, users): items recommended to the user by the arm
    watches: np.ndarray  # (looks, users)
    rating_means: np.ndarray  # one per user who rated in the span
    ratings: int  # the ratings behind them
    pre: np.ndarray  # per user: watches before the experiment (CUPED's covariate)

    def ratio(self, look: int = -1) -> lift.RatioStat:
        """Watch-through over the users recommended something by the end of `look`."""
        seen = self.shown[look] > 0
        return lift.RatioStat.of(self.watches[look][seen], self.shown[look][seen])


def arm_users(reco: RecoLog, win: LogWindow, variant: str, looks: int = LOOKS,
              pre_end: np.datetime64 | None = None) -> ArmUsers:
    """`variant`'s users and their per-look figures, in one pass over the window. A user
    served by another arm too in the window (a split change moved them) belongs to neither:
    their behaviour mixes both. Watches and ratings count from the user's first
    recommendation by the arm in the window on (earlier ones answer something else);
    `pre_end` (default: the window's start) ends the period of the covariate."""
    mine = reco.arm(variant)
    m = win.in_win & mine
    served, pos = dense_index(reco.user[win.in_win])  # the window's users, sorted
    by = np.bincount(pos, weights=mine[win.in_win], minlength=len(served))
    ids = served[by == np.bincount(pos, minlength=len(served))]  # served by this arm only
    if not len(ids):  # every user it served was served by another arm too
        empty = np.zeros((looks, 0))
        return ArmUsers(ids, empty, empty, np.zeros(0), 0, np.zeros(0))
    pos, ok = _positions(ids, reco.user[m])
    ts = reco.ts[m]
    shown = _cumulative(looks, len(ids), _look(win, ts, looks)[ok], pos[ok],
                        win.lengths[m][ok])
    first = np.full(len(ids), np.iinfo(np.int64).max)
    np.minimum.at(first, pos[ok], ts[ok].astype(np.int64))
    watchers = win.watch["user_id"].to_numpy(dtype=np.int64)
    during = win.during(win.watch_ts)
    w_ts = win.watch_ts[during]
    wpos, wok = _positions(ids, watchers[during])
    wok &= w_ts.astype(np.int64) >= first[np.minimum(wpos, len(ids) - 1)]
    watches = _cumulative(looks, len(ids), _look(win, w_ts, looks)[wok], wpos[wok], None)
    before = win.watch_ts < (win.start if pre_end is None else pre_end)
    ppos, pok = _positions(ids, watchers[before])
    pre = np.bincount(ppos[pok], minlength=len(ids)).astype(float)
    rated = win.rating_in
    means, count = pd.Series(dtype=float), 0
    if len(rated):
        rpos, rok = _positions(ids, rated["user_id"].to_numpy(dtype=np.int64))
        r_ts = win.rating_ts[win.during(win.rating_ts)].astype(np.int64)  # rated's times
        rok &= r_ts >= first[np.minimum(rpos, len(ids) - 1)]
        means, count = rated[rok].groupby("user_id")["rating"].mean(), int(rok.sum())
    return ArmUsers(ids, shown, watches, means.to_numpy(dtype=float), count, pre)


def _positions(ids: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's index in the sorted, non-empty `ids` (meaningless where absent), and
    whether it is there at all."""
    return positions(ids, users)


def _look(win: LogWindow, ts: np.ndarray, looks: int) -> np.ndarray:
    """The look (0-based) during which each time in the window falls."""
    step = win.length / looks
    return np.clip((ts - win.start) // step, 0, looks - 1).astype(np.int64)


def _cumulative(looks: int, users: int, look: np.ndarray, pos: np.ndarray,
                weights: np.ndarray | None) -> np.ndarray:
    """(looks, users) sums of `weights` (counts without), cumulative over the looks."""
    grid = np.bincount(look * users + pos, weights=weights, minlength=looks * users)
    return grid.astype(float).reshape(looks, users).cumsum(axis=0)


# -- the section ---------------------------------------------------------------------------

def compute(cfg: AnalyticsSettings, split: float, reco: RecoLog, win: LogWindow,
            fairness: dict[VariantName, Fairness],
            split_changes: Sequence[pd.Timestamp] = (), *,
            arms: Sequence[str] = ("A", "B"),
            record: ExperimentRecord | None = None,
            probes: pd.DataFrame | None = None) -> Experiment:
    """The section for `record` (an experiment, see the module's docstring) or, without
    one, for the window under the default split: `arms` (the first is the control) share
    the users as `split`, `split_changes` say when that changed. `fairness` holds each
    variant's requirements, a guardrail of every arm; `probes` the cycle's health probes
    with the request counters they scraped (the error-rate guardrail)."""
    if record is not None:
        return _experiment(cfg, reco, win, fairness, record, probes)
    pair = list(arms[:2])
    win = win.span(reco, win.start, win.end, reco.outside_experiments())  # one allocation

    def srm(users: dict[VariantName, ArmUsers]) -> SampleRatio | None:
        if not set(pair) <= set(users):
            return None
        return sample_ratio(win, {v: len(users[v].ids) for v in pair},
                            {pair[0]: split, pair[1]: 1 - split}, split_changes)

    return analyse(cfg, reco, win, pair, fairness, srm, [], None, probes)


def _experiment(cfg: AnalyticsSettings, reco: RecoLog, win: LogWindow,
                fairness: dict[VariantName, Fairness], record: ExperimentRecord,
                probes: pd.DataFrame | None) -> Experiment:
    exp_id, end = record.spec.id, win.end
    entry = entry_epochs(reco, exp_id)
    summaries, current = [], None
    stop = naive(pd.Timestamp(record.stop)) if record.stop is not None else None
    for i, epoch in enumerate(record.epochs):
        start = naive(pd.Timestamp(epoch.start))
        nxt = (naive(pd.Timestamp(record.epochs[i + 1].start)) if i + 1 < len(record.epochs)
               else stop)
        until = end if nxt is None else min(nxt, end)
        if start >= until:
            continue
        cohort = win.span(reco, start, until,
                          reco.served_under(exp_id, epoch.number) & (entry == epoch.number))
        names = [a.variant for a in record.spec.arms if a.variant in epoch.weights]
        users = {v: len(np.unique(reco.user[cohort.in_win & reco.arm(v)])) for v in names}
        srm = allocation_srm(users, {v: epoch.weights[v] for v in names})
        summaries.append(EpochSummary(
            number=epoch.number, start=str(pd.Timestamp(start, tz="UTC")),
            end=None if nxt is None or nxt > end else str(pd.Timestamp(nxt, tz="UTC")),
            weights=dict(epoch.weights), users=users, srm=srm))
        current = (cohort, names, srm, epoch)
    if current is None:  # the experiment starts after the snapshot's end
        return Experiment(arms={}, id=exp_id, running=record.running,
                          control=record.spec.control)
    cohort, names, srm, epoch = current
    control = record.spec.control
    ordered = [control, *(v for v in names if v != control and epoch.weights[v] > 0)]
    guards = list(record.spec.guardrails) or [
        Guardrail(metric="latency_p95_ms", max=cfg.sla_p95_ms),
        Guardrail(metric="error_rate", max=cfg.max_error_rate)]
    out = analyse(cfg, reco, cohort, ordered, fairness, lambda _: srm, guards,
                  naive(pd.Timestamp(record.start)), probes)
    return out.model_copy(update={
        "id": exp_id, "epoch": epoch.number, "running": record.running, "epochs": summaries,
        "start": str(pd.Timestamp(cohort.start, tz="UTC")),
        "end": str(pd.Timestamp(cohort.end, tz="UTC"))})


def allocation_srm(users: dict[VariantName, int], weights: dict[VariantName, float]
                   ) -> SampleRatio:
    """Chi-square of users per arm against the arms' weights (N arms)."""
    total = sum(weights.values())
    shares = {v: w / total for v, w in weights.items()}
    return SampleRatio.model_validate(
        abtest.sample_ratio_mismatch([users.get(v, 0) for v in shares], list(shares.values()))
        | {"weights": shares, "split": next(iter(shares.values())) if len(shares) == 2
           else None})


def entry_epochs(reco: RecoLog, experiment: str) -> np.ndarray:
    """Per response under `experiment`: the epoch its user entered the experiment in (their
    first response's; epochs only grow); -1 elsewhere."""
    out = np.full(len(reco), -1, dtype=np.int64)
    under = np.flatnonzero(reco.served_under(experiment))
    if not len(under) or reco.epoch is None:
        return out
    users, inverse = np.unique(reco.user[under], return_inverse=True)
    first = np.full(len(users), np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, reco.epoch[under])
    out[under] = first[inverse]
    return out


def analyse(cfg: AnalyticsSettings, reco: RecoLog, win: LogWindow, arms: list[str],
            fairness: dict[VariantName, Fairness],
            srm_of: Callable[[dict[VariantName, ArmUsers]], SampleRatio | None],
            guards: list[Guardrail], pre_end: np.datetime64 | None,
            probes: pd.DataFrame | None = None) -> Experiment:
    """Every arm's figures over `win`; each of `arms[1:]` tested against `arms[0]`, with
    the sample-ratio check `srm_of` makes of the arms' users. `pre_end`: the experiment's
    start, which ends CUPED's pre-period (None: no CUPED; under the sticky default split a
    user's past was served by the same arm, so it is no pre-treatment covariate)."""
    figures: dict[VariantName, Arm] = {}
    users: dict[VariantName, ArmUsers] = {}
    for v in win.variants:
        u = users[v] = arm_users(reco, win, v, pre_end=pre_end)
        r = u.ratio()
        se = (r.variance / r.n) ** 0.5 if r.n >= 2 else None
        wt = r.mean if r.d.sum else None
        figures[v] = Arm(
            requests=int((win.in_win & reco.arm(v)).sum()), users=len(u.ids),
            recommended_items=int(u.shown[-1].sum()), watches=int(u.watches[-1].sum()),
            watch_through=wt,
            watch_through_ci=(None, None) if se is None or wt is None else
            (wt - Z95 * se, wt + Z95 * se),
            ratings=u.ratings,
            mean_rating=float(u.rating_means.mean()) if len(u.rating_means) else None,
            mean_rating_ci=abtest.mean_ci(u.rating_means.tolist()))
    control, treatments = arms[0], [v for v in arms[1:] if v in users]
    checks = guardrail_checks(reco, win, figures, fairness, guards, probes)
    if control not in users or not treatments:
        return Experiment(arms=figures, control=control, guardrails=checks)
    comparisons = with_holm({t: compare(cfg, users[control], users[t], pre_end is not None)
                             for t in treatments})
    srm = srm_of(users)
    return Experiment(arms=figures, control=control, comparisons=comparisons, srm=srm,
                      guardrails=checks,
                      winner=verdict(cfg, control, comparisons, srm, fairness, checks))


def compare(cfg: AnalyticsSettings, a: ArmUsers, b: ArmUsers, adjust: bool = True
            ) -> Comparison:
    """Treatment `b` against control `a` (`adjust`: with CUPED)."""
    ratings_a, ratings_b = lift.MeanStat.of(a.rating_means), lift.MeanStat.of(b.rating_means)
    post = lift.bayesian(a.ratio(), b.ratio(), relative=True)
    rating_seq = lift.always_valid(ratings_a, ratings_b, relative=False, alpha=cfg.alpha,
                                   tuning=cfg.sequential_tuning)
    return Comparison(
        watch_through_test=lift_test(PRIMARY, a.ratio(), b.ratio(), cfg.alpha),
        rating_test=lift_test(SECONDARY, ratings_a, ratings_b, cfg.alpha),
        cuped=cuped(a, b, cfg.alpha) if adjust else Cuped(
            reason="no experiment: no pre-period (users kept their arm before the window)"),
        sequential=sequential(cfg, a, b),
        bayes=BayesSummary(chance_to_win=post.chance_to_win, risk_a=post.risk_control,
                           risk_b=post.risk_treatment),
        rating_p_value=rating_seq.p_value)


def with_holm(comparisons: dict[VariantName, Comparison]) -> dict[VariantName, Comparison]:
    """Holm's correction over every treatment's always-valid p-values of both metrics (a
    missing p counts as 1)."""
    keys = [(t, m) for t in comparisons for m in (PRIMARY, SECONDARY)]
    raw = [(comparisons[t].sequential.p_value if m == PRIMARY
            else comparisons[t].rating_p_value) for t, m in keys]
    adjusted = lift.holm([1.0 if p is None else p for p in raw])
    out = {}
    for t, c in comparisons.items():
        holm = {m: p for (tt, m), p in zip(keys, adjusted, strict=True) if tt == t}
        out[t] = c.model_copy(update={"holm": holm})
    return out


def sample_ratio(win: LogWindow, users: dict[VariantName, int],
                 weights: dict[VariantName, float], split_changes: Sequence[pd.Timestamp]
                 ) -> SampleRatio:
    """Users per arm against the default split in force; not checked over a window the
    split changed in (its users came under two allocations, which one split cannot
    describe)."""
    start, end = pd.Timestamp(win.start, tz="UTC"), pd.Timestamp(win.end, tz="UTC")
    changed = [t for t in split_changes if start <= t < end]
    if changed:
        return SampleRatio(chi2=None, p_value=None, mismatch=False,
                           split=next(iter(weights.values())),
                           reason=f"not checked: the split changed at {max(changed)} inside "
                                  "this window")
    return allocation_srm(users, weights)


def lift_test(metric: str, a: lift.Stat, b: lift.Stat, alpha: float) -> LiftTest:
    """The fixed-horizon test of the treatment `b` against the control `a`, absolute and
    relative."""
    absolute = lift.fixed_horizon(a, b, relative=False, alpha=alpha)
    relative = lift.fixed_horizon(a, b, relative=True, alpha=alpha)
    return LiftTest(metric=metric, diff=absolute.estimate, ci_low=absolute.ci_low,
                    ci_high=absolute.ci_high, relative=relative.estimate,
                    relative_ci_low=relative.ci_low, relative_ci_high=relative.ci_high,
                    p_value=absolute.p_value, reason=absolute.reason)


def cuped(a: ArmUsers, b: ArmUsers, alpha: float) -> Cuped:
    """The absolute watch-through lift adjusted by each user's watches before the experiment
    (lift.ratio_cuped); the variance reduction is against the same users unadjusted."""
    sa, sb = a.shown[-1] > 0, b.shown[-1] > 0
    if sa.sum() < 2 or sb.sum() < 2:
        return Cuped(reason="not enough data")
    (pc, pt), (c, t) = lift.ratio_cuped(
        (a.watches[-1][sa], a.shown[-1][sa], a.pre[sa]),
        (b.watches[-1][sb], b.shown[-1][sb], b.pre[sb]))
    adjusted = lift.fixed_horizon(c, t, relative=False, alpha=alpha)
    plain = lift.fixed_horizon(pc, pt, relative=False, alpha=alpha)
    reduction = None
    if adjusted.se is not None and plain.se:
        reduction = 1.0 - adjusted.se ** 2 / plain.se ** 2
    return Cuped(diff=adjusted.estimate, ci_low=adjusted.ci_low, ci_high=adjusted.ci_high,
                 p_value=adjusted.p_value, theta=c.theta, variance_reduction=reduction,
                 reason=adjusted.reason)


def guardrail_checks(reco: RecoLog, win: LogWindow, figures: dict[VariantName, Arm],
                     fairness: dict[VariantName, Fairness], guards: list[Guardrail],
                     probes: pd.DataFrame | None = None) -> list[GuardrailCheck]:
    """Every arm against every guardrail: latency p95 over the arm's logged responses in
    the span, its error rate between the span's first and last probe, the arm's
    watch-through and mean rating, its fairness figures (the window's)."""
    out = []
    for v, arm in figures.items():
        fair = fairness.get(v)
        for g in guards:
            value: float | None
            if g.metric == "latency_p95_ms":
                value = ops.latency_percentiles(reco.latency[win.in_win & reco.arm(v)])["p95"]
            elif g.metric == "error_rate":
                value = probed_error_rate(probes, win, v)
            elif g.metric in ("watch_through", "mean_rating"):
                value = getattr(arm, g.metric)
            else:
                value = getattr(fair, g.metric) if fair is not None else None
            passed = value is not None and not math.isnan(value) and \
                (g.max is None or value <= g.max) and (g.min is None or value >= g.min)
            out.append(GuardrailCheck(arm=v, metric=g.metric, value=value, max=g.max,
                                      min=g.min, passed=passed))
    return out


def probed_error_rate(probes: pd.DataFrame | None, win: LogWindow, arm: str
                      ) -> float | None:
    """`arm`'s 5xx share of recommendation requests over the probes inside the span that
    scraped the counters (a probe without the arm: it had served nothing yet); None with
    fewer than two such probes or no request counted."""
    if probes is None or not len(probes) or "requests" not in probes:
        return None
    scraped = probes[probes["requests"].notna()]
    scraped = scraped[win.during(naive_series(scraped["ts"]))] if len(scraped) else scraped
    counts = [tuple(c.get(arm, (0.0, 0.0))) for c in scraped["requests"]]
    return ops.counter_error_rate(counts) if len(counts) >= 2 else None


def verdict(cfg: AnalyticsSettings, control: str, comparisons: dict[VariantName, Comparison],
            srm: SampleRatio | None, fairness: dict[VariantName, Fairness],
            guardrails: Sequence[GuardrailCheck] = ()) -> Winner:
    """A treatment wins when its Holm-adjusted always-valid p is under alpha with the
    confidence sequence above zero (the best such one); the control wins when every
    treatment is significantly worse. Then the allocation must hold (SRM) and the winner
    meet its fairness requirements (missing figures fail) and guardrails; else the reason
    says which condition holds it back."""
    if all(c.watch_through_test.diff is None for c in comparisons.values()):
        return Winner(variant=None, reason="not enough data", leader=None)

    def significant(c: Comparison) -> bool:
        p = c.holm.get(PRIMARY, c.sequential.p_value)
        return p is not None and p < cfg.alpha

    def estimate(c: Comparison) -> float:
        return c.watch_through_test.diff if c.watch_through_test.diff is not None else -math.inf

    better = {t: c for t, c in comparisons.items() if significant(c)
              and c.sequential.ci_low is not None and c.sequential.ci_low > 0}
    worse = {t: c for t, c in comparisons.items() if significant(c)
             and c.sequential.ci_high is not None and c.sequential.ci_high < 0}
    if better:
        leader, won = max(better, key=lambda t: estimate(better[t])), True
    elif len(worse) == len(comparisons):
        leader, won = control, True
    else:
        best = max(comparisons, key=lambda t: estimate(comparisons[t]))
        leader, won = (best if estimate(comparisons[best]) > 0 else control), False
    checks = fairness.get(leader)
    failed = checks.requirements.failed() if checks is not None else ["no fairness figures"]
    broken = [g.metric for g in guardrails if g.arm == leader and not g.passed]
    if not won and any(significant(c) for c in comparisons.values()):
        variant, reason = None, ("significant, but the confidence sequence still spans 0 "
                                 "(no sign yet)")
    elif not won:
        variant, reason = None, "not significant yet (always-valid p >= alpha, Holm-adjusted)"
    elif srm is not None and srm.mismatch:
        variant, reason = None, "sample ratio mismatch: the allocation is broken"
    elif failed:
        variant, reason = None, f"{leader} leads but fails a fairness guardrail"
    elif broken:
        variant, reason = None, f"{leader} leads but fails a guardrail: {', '.join(broken)}"
    else:
        variant, reason = leader, "significant and within every guardrail"
    return Winner(variant=variant, reason=reason, leader=leader)


def sequential(cfg: AnalyticsSettings, a: ArmUsers, b: ArmUsers) -> Sequential:
    """The always-valid p-value of the relative watch-through lift over users, read at each
    look inside the span (a look sees only what had happened by its end): the running
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
