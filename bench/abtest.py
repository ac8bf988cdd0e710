"""Experiments simulated at user level, read by the analysis code the platform runs
(backend/ml/metrics/lift.py), against the slot-level test it replaced.

Users are heterogeneous: recommended items per user drawn from MovieLens-100K's ratings per
user (heavy-tailed), watch-through per user from a beta distribution around 15%, and a
pre-experiment period of the same users (their activity and watch-through, redrawn) as CUPED's
covariate. Users arrive in `--looks` equal batches; the analysis is read after every batch.

- A/A with continuous peeking: the always-valid test's false-positive rate (any look with
  p < alpha) over `--runs` runs, with its Wilson 95% interval, plain and with CUPED; beside
  it, on the same runs, the old slot-level z-test read once at the end, and the user-level
  fixed-horizon test peeked.
- Injected relative lifts of 2%, 5% and 10%: power of the fixed-horizon test (read once, at
  the end) and of the always-valid test (any look), and the median users to the always-valid
  decision, with and without CUPED; the variance reduction CUPED achieved.
- gbstats: the largest absolute difference between lift.py and GrowthBook's engine over shared
  cases (tests/reference/; "not run" without the reference environment).

    python bench/abtest.py [--runs 2000] [--power-runs 400] [--users 10000] [--looks 20]
Writes var/bench/abtest.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from backend.core.settings import Settings  # noqa: E402
from backend.data.movielens import load  # noqa: E402
from backend.ml.metrics import abtest, lift  # noqa: E402
from backend.ml.metrics.lift import RatioStat  # noqa: E402

ALPHA = 0.05
LIFTS = (0.02, 0.05, 0.10)


class Population:
    """Draws users: activity from MovieLens's per-user counts, watch-through per user."""

    def __init__(self, activity: np.ndarray, rate: float = 0.15, concentration: float = 6.0):
        self.activity = activity
        self.a, self.b = rate * concentration, (1 - rate) * concentration

    def arm(self, rng: np.random.Generator, n: int, relative_lift: float = 0.0) -> dict:
        shown = rng.choice(self.activity, n).astype(np.int64)
        p = rng.beta(self.a, self.b, n)
        # the pre-period: the same users, their activity and taste drifted
        pre_shown = rng.poisson(shown * rng.lognormal(0, 0.5, n)).clip(min=1)
        pre_p = np.minimum(1.0, p * rng.lognormal(0, 0.5, n))
        return {"shown": shown.astype(float),
                "watches": rng.binomial(shown, np.minimum(1.0, p * (1 + relative_lift)))
                .astype(float),
                "pre_shown": pre_shown.astype(float),
                "pre_watches": rng.binomial(pre_shown, pre_p).astype(float)}


def read(c: dict, t: dict, k: int, cuped: bool) -> tuple[lift.Stat, lift.Stat, bool]:
    """The two arms' statistics over their first `k` users: the ratio metric, or with CUPED
    (lift.ratio_cuped, as the platform's analysis) adjusted by the users' pre-period
    watch-through, linearised (both absolute)."""
    if not cuped:
        return (RatioStat.of(c["watches"][:k], c["shown"][:k]),
                RatioStat.of(t["watches"][:k], t["shown"][:k]), True)
    pw = np.concatenate([c["pre_watches"][:k], t["pre_watches"][:k]])
    ps = np.concatenate([c["pre_shown"][:k], t["pre_shown"][:k]])
    pre = lift.linearised(pw, ps, pw.sum() / ps.sum())
    _, (ac, at) = lift.ratio_cuped((c["watches"][:k], c["shown"][:k], pre[:k]),
                                   (t["watches"][:k], t["shown"][:k], pre[k:]))
    return ac, at, False


def run(pop: Population, rng: np.random.Generator, per_arm: int, looks: int, lift_: float,
        cuped: bool) -> dict:
    c, t = pop.arm(rng, per_arm), pop.arm(rng, per_arm, lift_)
    step = per_arm // looks
    decided_at, var_plain, var_adj = None, None, None
    peeked_fixed = False
    for look in range(1, looks + 1):
        k = look * step
        sc, st, relative = read(c, t, k, cuped)
        seq = lift.always_valid(sc, st, relative=relative, alpha=ALPHA)
        if decided_at is None and seq.p_value is not None and seq.p_value < ALPHA:
            decided_at = 2 * k
        fixed = lift.fixed_horizon(sc, st, relative=relative, alpha=ALPHA)
        peeked_fixed |= fixed.p_value is not None and fixed.p_value < ALPHA
    final = fixed
    if cuped:  # the variance of the estimate with and without the adjustment, same users
        plain = lift.fixed_horizon(*read(c, t, per_arm, False)[:2], relative=False)
        if plain.se is not None and final.se is not None:  # None: no estimate (skipped below)
            var_plain, var_adj = plain.se ** 2, final.se ** 2
    slot = abtest.two_proportion_z(int(t["watches"].sum()), int(t["shown"].sum()),
                                   int(c["watches"].sum()), int(c["shown"].sum()))
    return {"fixed": final.p_value is not None and final.p_value < ALPHA,
            "sequential": decided_at is not None, "users_to_decision": decided_at,
            "peeked_fixed": peeked_fixed, "slot": slot["p_value"] < ALPHA,
            "var_plain": var_plain, "var_adj": var_adj}


def rate(flags: list[bool]) -> dict:
    lo, hi = abtest.proportion_ci(sum(flags), len(flags))
    return {"rate": round(sum(flags) / len(flags), 4), "ci95": [round(lo, 4), round(hi, 4)],
            "runs": len(flags)}


def gbstats_diff(pop: Population, rng: np.random.Generator) -> float | None:
    """Largest |lift.py - gbstats| over shared cases; None without the reference env."""
    from tests.reference.gbstats_cases import compare  # the unit test's comparison

    arms = [(pop.arm(rng, 3000), pop.arm(rng, 3000, 0.05)) for _ in range(5)]
    return compare(arms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--power-runs", type=int, default=400)
    parser.add_argument("--users", type=int, default=10_000, help="both arms together")
    parser.add_argument("--looks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    ml = load(Settings().data_cache)
    pop = Population(ml.ratings.groupby("user_id").size().to_numpy())
    rng = np.random.default_rng(args.seed)
    per_arm = args.users // 2
    t0 = time.perf_counter()
    aa = [run(pop, rng, per_arm, args.looks, 0.0, False) for _ in range(args.runs)]
    aa_cuped = [run(pop, rng, per_arm, args.looks, 0.0, True) for _ in range(args.runs)]
    out: dict = {
        "users": args.users, "looks": args.looks, "alpha": ALPHA,
        "aa_false_positive_rate": rate([r["sequential"] for r in aa]),
        "aa_false_positive_rate_cuped": rate([r["sequential"] for r in aa_cuped]),
        "aa_false_positive_rate_slot_level": rate([r["slot"] for r in aa]),
        "aa_false_positive_rate_fixed_peeked": rate([r["peeked_fixed"] for r in aa]),
        "power": {}, "median_users_to_decision": {}, "cuped_variance_reduction": None}
    reductions = []
    for lift_ in LIFTS:
        for cuped in (False, True):
            rs = [run(pop, rng, per_arm, args.looks, lift_, cuped)
                  for _ in range(args.power_runs)]
            key = f"{lift_:.0%}" + (" cuped" if cuped else "")
            out["power"][key] = {"fixed_horizon": rate([r["fixed"] for r in rs])["rate"],
                                 "always_valid": rate([r["sequential"] for r in rs])["rate"]}
            took = [r["users_to_decision"] for r in rs if r["users_to_decision"]]
            out["median_users_to_decision"][key] = (int(np.median(took)) if took
                                                    else "not enough data")
            reductions += [1 - r["var_adj"] / r["var_plain"] for r in rs if r["var_plain"]]
    out["cuped_variance_reduction"] = round(float(np.median(reductions)), 4)
    diff = gbstats_diff(pop, rng)
    out["gbstats_max_abs_diff"] = "not run (no reference env)" if diff is None else diff
    out["seconds"] = round(time.perf_counter() - t0, 1)
    ok = all(out[k]["ci95"][1] <= 0.06 and out[k]["rate"] <= ALPHA
             for k in ("aa_false_positive_rate", "aa_false_positive_rate_cuped"))
    out["target_aa_fpr_at_most_alpha"] = ok

    print(f"\nA/A, {args.runs} runs, {args.users} users, a look after every "
          f"{args.users // args.looks}:")
    for name in ("aa_false_positive_rate", "aa_false_positive_rate_cuped",
                 "aa_false_positive_rate_fixed_peeked", "aa_false_positive_rate_slot_level"):
        r = out[name]
        print(f"  {name:<40}{r['rate']:>8.3f}  [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
    print(f"\n{'lift':<12}{'fixed':>8}{'always-valid':>14}{'median users':>14}")
    for key, p in out["power"].items():
        print(f"{key:<12}{p['fixed_horizon']:>8.3f}{p['always_valid']:>14.3f}"
              f"{out['median_users_to_decision'][key]!s:>14}")
    print(f"\nCUPED variance reduction (median): {out['cuped_variance_reduction']:.1%}")
    print(f"gbstats max abs diff: {out['gbstats_max_abs_diff']}")
    print(f"{'met   ' if ok else 'MISSED'} A/A false positives <= alpha, upper 95% <= 0.06")
    path = ROOT / "var" / "bench" / "abtest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
