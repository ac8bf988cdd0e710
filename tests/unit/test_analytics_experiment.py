"""Experiment section: per-arm figures over users, the user-level tests of B against A, the
sample-ratio check against the split in force, and the verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from backend.analytics import experiment
from backend.analytics.snapshot import (
    BayesSummary,
    Comparison,
    Cuped,
    Fairness,
    GuardrailCheck,
    LiftTest,
    MaxRequirement,
    MinRequirement,
    Requirements,
    SampleRatio,
    Sequential,
)
from backend.analytics.window import LogWindow, RecoLog
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics import lift
from registry.experiments import ArmSpec, Epoch, ExperimentSpec
from registry.experiments import Experiment as ExperimentRecord
from tests.unit.analytics_cases import ago, ratings, reco_log, watches, window

CFG = AnalyticsSettings(alpha=0.05)


def fair(passes: bool = True) -> Fairness:
    return Fairness(coverage=0.9, gini=0.1, top10_share=0.1, exposure_gini=0.1, diversity=None,
                    diversity_by_segment={}, parity_gap={}, requirements=Requirements(
                        coverage=MinRequirement(value=0.9, min=0.8, passed=passes),
                        parity=MaxRequirement(value=0.0, max=0.15, passed=True)))


def test_arms_count_each_user_once_and_leave_out_users_two_arms_served():
    reco = reco_log([(50, 1, "B", [4]),  # user 1: moved to A since (a split change)
                     (10, 1, "A", [1, 2]), (20, 3, "A", [3, 4]), (25, 4, "A", [5]),
                     (15, 2, "B", [4, 5, 6])])
    watch = watches([(5, 1, 1), (4, 1, 2), (5, 2, 4), (70, 2, 5),  # 70: before the window
                     (30, 3, 9), (10, 3, 3), (20, 4, 5)])  # 30: before user 3's first
    rating = ratings([(5, 1, 1, 4), (4, 1, 2, 5), (5, 2, 4, 3), (8, 3, 3, 2), (9, 4, 5, 4)])
    out = experiment.compute(CFG, 0.5, reco, window(reco, watch, rating),
                             {"A": fair(), "B": fair()})
    a, b = out.arms["A"], out.arms["B"]
    # A: users 3 and 4 (2 and 1 items, 1 and 1 watches); B: user 2; user 1 in neither
    assert (a.requests, a.users, a.recommended_items, a.watches) == (3, 2, 3, 2)
    assert (b.requests, b.users, b.recommended_items, b.watches) == (2, 1, 3, 1)
    assert a.watch_through == pytest.approx(2 / 3) and b.watch_through == pytest.approx(1 / 3)
    r = lift.RatioStat.of([1, 1], [2, 1])  # A's users: (watches, shown)
    half = 1.959963984540054 * (r.variance / 2) ** 0.5
    assert a.watch_through_ci == pytest.approx((2 / 3 - half, 2 / 3 + half))
    assert b.watch_through_ci == (None, None)  # one user: no interval
    assert a.mean_rating == 3.0 and a.ratings == 2
    assert a.mean_rating_ci == pytest.approx(stats.t.interval(0.95, 1, 3.0, 1.0))
    assert out.srm is not None and out.srm.split == 0.5 and out.control == "A"
    wt = out.comparisons["B"].watch_through_test
    assert wt.diff is None and wt.reason == "not enough data"
    assert out.winner is not None and out.winner.variant is None
    assert out.winner.reason == "not enough data"


def many_users(n: int = 60, rate_b: float = 0.5) -> tuple:
    """`n` users per arm, one response each spread over the window, skewed list lengths;
    users of B watch more of what they are shown."""
    rng = np.random.default_rng(0)
    rows, watch = [], []
    for u in range(1, 2 * n + 1):
        v = "A" if u % 2 else "B"
        k = int(rng.integers(1, 6))
        t = float(rng.uniform(1, 59))
        rows.append((t, u, v, list(range(1, k + 1))))
        p = 0.3 if v == "A" else rate_b
        watch += [(t - 0.5, u, i) for i in range(1, k + 1) if rng.random() < p]
    rating = ratings([(m, u, i, 1 + (u * i) % 5) for m, u, i in watch])
    return reco_log(rows), watches(watch), rating


def test_the_tests_are_user_level_and_the_srm_uses_the_split_in_force():
    reco, watch, rating = many_users()
    win = window(reco, watch, rating)
    out = experiment.compute(CFG, 0.6, reco, win, {"A": fair(), "B": fair()})
    a, b = (experiment.arm_users(reco, win, v) for v in "AB")
    ref = lift.fixed_horizon(a.ratio(), b.ratio(), relative=False)
    wt = out.comparisons["B"].watch_through_test
    assert wt.diff == pytest.approx(ref.estimate)
    assert wt.p_value == pytest.approx(ref.p_value)
    assert wt.relative == pytest.approx(lift.fixed_horizon(a.ratio(), b.ratio()).estimate)
    welch = stats.ttest_ind(b.rating_means, a.rating_means, equal_var=False)
    assert out.comparisons["B"].rating_test.p_value == pytest.approx(welch.pvalue)
    chi = stats.chisquare([len(a.ids), len(b.ids)],
                          [0.6 * (len(a.ids) + len(b.ids)), 0.4 * (len(a.ids) + len(b.ids))])
    assert out.srm is not None and out.srm.split == 0.6
    assert out.srm.p_value == pytest.approx(chi.pvalue)
    assert 0.5 < out.comparisons["B"].bayes.chance_to_win <= 1  # B watches more


def test_each_look_sees_only_what_had_happened_by_then():
    reco, watch, rating = many_users()
    late = reco_log([(m, u, v, items) for m, u, v, items in
                     [(2.0 * (i % 2) + 1, i, "A" if i % 2 else "B", [1, 2, 3])
                      for i in range(1, 41)]])  # every response in the last 3 minutes
    late_watch = watches([(0.5, i, 1 + i % 3) for i in range(1, 41) if i % 3 or i % 4])
    win = window(late, late_watch)
    seq = experiment.sequential(CFG, *(experiment.arm_users(late, win, v) for v in "AB"))
    assert len(seq.series) == experiment.LOOKS
    assert seq.series[:-1] == [None] * (experiment.LOOKS - 1) and seq.series[-1] is not None
    win = window(reco, watch, rating)
    a, b = (experiment.arm_users(reco, win, v) for v in "AB")
    # look 6 of 12 (the window's first half): only the users recommended something by then,
    # with only their watches by then
    half = a.ratio(5)
    first = (reco.ts < win.start + win.length / 2) & reco.arm("A")
    assert half.n == len(np.unique(reco.user[first]))
    assert half.d.sum == win.lengths[first].sum()
    mine = np.isin(watch["user_id"].to_numpy(), reco.user[first]) & (
        win.watch_ts < win.start + win.length / 2)
    assert half.m.sum == mine.sum()  # their watches by then only
    full = experiment.sequential(CFG, a, b)
    looks = [lift.always_valid(a.ratio(k), b.ratio(k), alpha=CFG.alpha) for k in range(12)]
    assert full.p_value == min(x.p_value for x in looks if x.p_value is not None)
    assert full.ci_low == max(x.ci_low for x in looks if x.ci_low is not None)
    assert full.ci_high == min(x.ci_high for x in looks if x.ci_high is not None)


def test_one_arm_has_figures_but_no_tests():
    reco = reco_log([(10, 1, "A", [1, 2])])
    out = experiment.compute(CFG, 0.5, reco, window(reco), {})
    assert list(out.arms) == ["A"] and out.arms["A"].watch_through == 0.0
    assert out.comparisons == {} and out.srm is None and out.winner is None


def comparison(p: float | None, diff: float = 0.02, low: float = 0.01, high: float = 0.2,
               holm: float | None = None) -> Comparison:
    wt = LiftTest(metric="watch-through", diff=diff, ci_low=0.0, ci_high=0.04, relative=0.1,
                  relative_ci_low=0.0, relative_ci_high=0.2, p_value=0.01)
    return Comparison(watch_through_test=wt, rating_test=LiftTest(), cuped=Cuped(),
                      sequential=Sequential(p_value=p, series=[1.0, p or 1.0], ci_low=low,
                                            ci_high=high),
                      bayes=BayesSummary(chance_to_win=0.9, risk_a=0.1, risk_b=0.0),
                      holm={} if holm is None else {"watch-through": holm})


@pytest.mark.parametrize(("p", "mismatch", "passes", "latency_ok", "variant", "reason"), [
    (0.2, False, True, True, None, "not significant yet"),
    (None, False, True, True, None, "not significant yet"),
    (0.01, True, True, True, None, "sample ratio mismatch"),
    (0.01, False, False, True, None, "B leads but fails a fairness guardrail"),
    (0.01, False, True, False, None, "B leads but fails a guardrail: latency_p95_ms"),
    (0.01, False, True, True, "B", "significant and within every guardrail"),
])
def test_verdict(p, mismatch, passes, latency_ok, variant, reason):
    srm = SampleRatio(chi2=0.1, p_value=0.5, mismatch=mismatch)
    guard = GuardrailCheck(arm="B", metric="latency_p95_ms",
                           value=50.0 if latency_ok else 500.0, max=100.0, passed=latency_ok)
    w = experiment.verdict(CFG, "A", {"B": comparison(p)}, srm,
                           {"A": fair(), "B": fair(passes)}, [guard])
    assert w.leader == "B" and w.variant == variant and w.reason.startswith(reason)


def test_verdict_over_three_arms_takes_holms_p_and_the_best_significant_treatment():
    fairs = {v: fair() for v in "ABC"}
    # B and C both beat A; C by more: C wins
    w = experiment.verdict(CFG, "A", {"B": comparison(0.001, diff=0.01, holm=0.002),
                                      "C": comparison(0.001, diff=0.03, holm=0.002)},
                           None, fairs)
    assert (w.variant, w.leader) == ("C", "C")
    # significant alone, not after Holm: no winner
    w = experiment.verdict(CFG, "A", {"B": comparison(0.03, holm=0.06),
                                      "C": comparison(0.5, diff=-0.01, holm=0.5)}, None, fairs)
    assert w.variant is None and w.leader == "B" and w.reason.startswith("not significant")
    # every treatment significantly worse: the control wins
    worse = {"B": comparison(0.001, diff=-0.02, low=-0.3, high=-0.1, holm=0.002),
             "C": comparison(0.001, diff=-0.01, low=-0.2, high=-0.05, holm=0.002)}
    w = experiment.verdict(CFG, "A", worse, None, fairs)
    assert (w.variant, w.leader) == ("A", "A")


def test_holm_runs_over_every_treatment_and_both_metrics():
    from statsmodels.stats.multitest import multipletests

    comps = {"B": comparison(0.01).model_copy(update={"rating_p_value": 0.04}),
             "C": comparison(0.03).model_copy(update={"rating_p_value": None})}
    out = experiment.with_holm(comps)
    ref = multipletests([0.01, 0.04, 0.03, 1.0], method="holm")[1]
    got = [out["B"].holm["watch-through"], out["B"].holm["mean rating"],
           out["C"].holm["watch-through"], out["C"].holm["mean rating"]]
    assert got == pytest.approx(list(ref))


def test_srm_is_not_checked_over_a_window_the_split_changed_in():
    from tests.unit.analytics_cases import ago

    reco, watch, rating = many_users()
    win = window(reco, watch, rating)
    skewed = experiment.compute(CFG, 0.9, reco, win, {"A": fair(), "B": fair()})
    assert skewed.srm is not None and skewed.srm.mismatch  # 60/60 users against 90/10
    during = experiment.compute(CFG, 0.9, reco, win, {"A": fair(), "B": fair()},
                                [ago(90), ago(20)])
    assert during.srm is not None and not during.srm.mismatch
    assert during.srm.p_value is None and "changed" in (during.srm.reason or "")
    before = experiment.compute(CFG, 0.9, reco, win, {"A": fair(), "B": fair()}, [ago(90)])
    assert before.srm is not None and before.srm.mismatch


def test_an_arm_whose_every_user_moved_has_no_users_and_no_figures():
    reco = reco_log([(50, 1, "B", [4]), (10, 1, "A", [1, 2]), (20, 3, "A", [3])])
    watch = watches([(5, 1, 1), (15, 3, 3)])
    out = experiment.compute(CFG, 0.5, reco, window(reco, watch), {"A": fair(), "B": fair()})
    b = out.arms["B"]
    assert (b.requests, b.users, b.recommended_items, b.watches) == (1, 0, 0, 0)
    assert b.watch_through is None and out.winner is not None
    assert out.winner.reason == "not enough data"


def experiment_log(rows: list[tuple[float, int, str, list[int], str | None, int | None]]
                   ) -> RecoLog:
    """(minutes before END, user, variant, items, experiment, epoch) per response."""
    import pyarrow as pa

    table = pa.table({
        "ts": pa.array([ago(r[0]) for r in rows], pa.timestamp("us", tz="UTC")),
        "user_id": pa.array([r[1] for r in rows], pa.int64()),
        "variant": pa.array([r[2] for r in rows], pa.string()),
        "latency_ms": pa.array([10.0 + i for i in range(len(rows))], pa.float64()),
        "items": pa.array([r[3] for r in rows], pa.list_(pa.int64())),
        "experiment": pa.array([r[4] for r in rows], pa.string()),
        "epoch": pa.array([r[5] for r in rows], pa.int64())})
    return RecoLog.from_table(table)


def record(weights: list[dict[str, float]], starts: list[float]) -> ExperimentRecord:
    """An experiment e1 whose epoch i starts `starts[i]` minutes before END."""
    spec = ExperimentSpec(id="e1", arms=[ArmSpec(variant=v) for v in weights[-1]],
                          control="A", salt="s", weights=weights[0])
    epochs = [Epoch(number=i, start=ago(m).to_pydatetime(), weights=w)
              for i, (w, m) in enumerate(zip(weights, starts, strict=True))]
    return ExperimentRecord(spec=spec, start=epochs[0].start, epochs=epochs)


def three_arm_case() -> tuple[RecoLog, LogWindow, ExperimentRecord, pd.DataFrame]:
    """Experiment e1: epoch 0 (90..50 min ago) A and B 50/50 over users 1..80; epoch 1 (from
    50 min ago) A, B, C at 1:1:2, users 1..40 return and users 101..260 enter; C's users
    watch twice as much. With the probes' request counters."""
    rng = np.random.default_rng(1)
    rows, watch = [], []
    for u in range(1, 81):
        v = "AB"[u % 2]
        t = float(rng.uniform(51, 89))
        rows.append((t, u, v, [1, 2, 3], "e1", 0))
        watch += [(t - 0.2, u, i) for i in (1, 2, 3) if rng.random() < 0.3]
    for u in [*range(1, 41), *range(101, 261)]:
        v = ["A", "B", "C", "C"][u % 4] if u > 100 else "AB"[u % 2]
        t = float(rng.uniform(1, 49))
        rows.append((t, u, v, [4, 5, 6], "e1", 1))
        p = 0.6 if v == "C" else 0.3
        watch += [(t - 0.2, u, i) for i in (4, 5, 6) if rng.random() < p]
    rows.append((5.0, 999, "A", [1], None, None))  # served outside the experiment
    reco = experiment_log(rows)
    watch += [(120.0, u, 1) for u in range(101, 261, 3)]  # before it started: the covariate
    win = window(reco, watches(watch), minutes=180)
    exp = record([{"A": 1, "B": 1}, {"A": 1, "B": 1, "C": 2}], [90, 50])
    probes = pd.DataFrame({  # the counters /metrics gave the cycle's probes
        "ts": [ago(m).isoformat() for m in (70, 45, 2)], "ok": True,
        "requests": [{"A": (5.0, 5.0)}, {"A": (100.0, 1.0), "B": (50.0, 0.0)},
                     {"A": (300.0, 3.0), "B": (150.0, 5.0), "C": (80.0, 0.0)}]})
    return reco, win, exp, probes


def test_an_experiment_is_read_over_its_current_epochs_entrants_with_srm_per_epoch():
    reco, win, exp, probes = three_arm_case()
    out = experiment.compute(CFG, 0.5, reco, win, {v: fair() for v in "ABC"}, record=exp,
                             probes=probes)
    assert (out.id, out.epoch, out.control, out.running) == ("e1", 1, "A", True)
    # the current epoch's entrants only: users 101..260 (40 on A, 40 on B, 80 on C)
    assert {v: a.users for v, a in out.arms.items()} == {"A": 40, "B": 40, "C": 80}
    assert set(out.comparisons) == {"B", "C"}
    first, second = out.epochs
    assert first.users == {"A": 40, "B": 40} and first.end is not None
    assert second.users == {"A": 40, "B": 40, "C": 80} and second.end is None
    chi = stats.chisquare([40, 40, 80], [40, 40, 80])
    assert second.srm.p_value == pytest.approx(chi.pvalue) and not second.srm.mismatch
    assert second.srm.weights == {"A": 0.25, "B": 0.25, "C": 0.5}
    assert out.srm == second.srm
    c = out.comparisons["C"]
    assert c.watch_through_test.relative is not None and c.watch_through_test.relative > 0.5
    assert c.cuped.variance_reduction is not None and c.cuped.theta is not None
    # CUPED's adjustment, by hand: the linearised watch-through less theta x the users'
    # watches before the experiment, pooled theta over A and C
    a_users, c_users = (experiment.arm_users(reco, win.span(
        reco, win.start, win.end, reco.served_under("e1", 1) & (
            experiment.entry_epochs(reco, "e1") == 1)), v, pre_end=np.datetime64(
                ago(90).tz_localize(None))) for v in "AC")
    m = np.concatenate([a_users.watches[-1], c_users.watches[-1]])
    d = np.concatenate([a_users.shown[-1], c_users.shown[-1]])
    x = np.concatenate([a_users.pre, c_users.pre])
    y = lift.linearised(m, d, m.sum() / d.sum())
    theta = np.cov(y, x, ddof=1)[0, 1] / x.var(ddof=1)
    adj = y - theta * x
    k = len(a_users.ids)
    assert c.cuped.theta == pytest.approx(theta)
    assert c.cuped.diff == pytest.approx(adj[k:].mean() - adj[:k].mean())
    errors = {g.arm: (g.value, g.passed) for g in out.guardrails if g.metric == "error_rate"}
    # the probe before the epoch is not read; C was not counted yet in the first one
    assert errors == {"A": (pytest.approx(0.01), True), "B": (pytest.approx(0.05), False),
                      "C": (0.0, True)}
    assert {g.metric for g in out.guardrails} == {"latency_p95_ms", "error_rate"}
    assert out.winner is not None and (out.winner.leader != "B" or out.winner.variant is None)


def test_an_error_rate_from_counters_survives_a_reset_and_is_unknown_without_requests():
    from backend.ml.metrics.ops import counter_error_rate

    assert counter_error_rate([(100, 2), (300, 6)]) == pytest.approx(0.02)
    # a restart reset the counters between the 2nd and 3rd scrape: 200 + 50 requests
    assert counter_error_rate([(100, 2), (300, 6), (50, 1)]) == pytest.approx(5 / 250)
    assert counter_error_rate([(100, 2), (100, 2)]) is None  # no request in between
    assert counter_error_rate([(100, 2)]) is None


def test_srm_flags_an_epoch_whose_users_do_not_follow_its_weights():
    rows = [(10.0, u, "A" if u < 80 else "B", [1], "e1", 0) for u in range(1, 101)]
    reco = experiment_log(rows)
    exp = record([{"A": 1, "B": 1}], [60])
    out = experiment.compute(CFG, 0.5, reco, window(reco), {}, record=exp)
    assert out.srm is not None and out.srm.mismatch  # 79/21 against 50/50
    assert out.winner is not None and out.winner.variant is None


def test_without_an_experiment_only_the_default_splits_responses_are_read():
    rows = [(10.0, u, "AB"[u % 2], [1, 2], None, None) for u in range(1, 41)]
    rows += [(20.0, u, "C", [3], "e1", 0) for u in range(100, 110)]  # a stopped experiment's
    rows += [(15.0, 1, "A", [4], "e1", 0)]  # user 1 was on A under e1 too, not on B
    reco = experiment_log(rows)
    out = experiment.compute(CFG, 0.5, reco, window(reco), {"A": fair(), "B": fair()})
    assert set(out.arms) == {"A", "B"}
    assert (out.arms["A"].users, out.arms["B"].users) == (20, 20)
    assert out.srm is not None and out.srm.p_value == pytest.approx(1.0)
    assert out.comparisons["B"].cuped.reason is not None  # no pre-period to adjust by


def test_arm_users_are_those_no_other_arm_served():
    """An arm's users: served by it in the window and by no other response there (the
    reference: unique and setdiff)."""
    import numpy as np

    from backend.analytics.experiment import arm_users
    from tests.unit.analytics_cases import reco_log, window

    rng = np.random.default_rng(9)
    reco = reco_log([(float(rng.uniform(0, 120)), int(rng.integers(1, 40)),
                      str(rng.choice(["A", "B", "C"])), [1, 2]) for _ in range(300)])
    win = window(reco)
    for v in ("A", "B", "C"):
        m = win.in_win & reco.arm(v)
        want = np.setdiff1d(np.unique(reco.user[m]),
                            np.unique(reco.user[win.in_win & ~reco.arm(v)]))
        assert arm_users(reco, win, v).ids.tolist() == want.tolist()
