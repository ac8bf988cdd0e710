"""Reference oracle: GrowthBook's stats engine ``gbstats`` 0.8.0 run on given summary statistics.

This is not a test and is not collected by pytest. It runs under the separate reference venv
(see ``tests/reference/README.md``), never the project's own environment, and imports nothing
from this repository. It exists so that our own A/B statistics can be checked against gbstats
on identical inputs.

Usage::

    echo '[{...case...}, ...]' | var/refenv/gbstats/bin/python tests/reference/gbstats_ref.py

stdin is a JSON list of cases, stdout a JSON list of results in the same order. Bad input
makes the script exit non-zero with a message on stderr. Non-finite floats are written as
Python's json writes them (NaN, Infinity), which json.loads reads back.

A case::

    {"kind": "mean" | "ratio" | "cuped",
     "test": "frequentist" | "sequential" | "bayesian",
     "difference": "relative" | "absolute",
     "alpha": 0.05,                        # optional, default 0.05 (CI level 1 - alpha)
     "sequential_tuning": 5000,            # sequential only; optional, default 5000
     "prior": {"mean": 0, "variance": 1, "proper": false},   # bayesian only; optional
     "prior_type": "relative",             # bayesian only; optional, scale of "prior"
     "inverse": false,                     # bayesian only; optional
     "control": {...}, "treatment": {...}}

The arm keys are gbstats' own constructor arguments (models/statistics.py):

* base statistic ``{"n", "sum", "sum_squares"}`` -> ``SampleMeanStatistic``;
  ``{"n", "sum"}`` (no ``sum_squares``) -> ``ProportionStatistic`` (a 0/1 metric).
* kind "mean":  a base statistic.
* kind "ratio": ``{"n", "m_statistic": base, "d_statistic": base, "m_d_sum_of_products"}``
  -> ``RatioStatistic`` (n = users; sum_of_products = sum over users of numerator*denominator).
* kind "cuped": ``{"n", "post_statistic": base, "pre_statistic": base,
  "post_pre_sum_of_products"}`` -> ``RegressionAdjustedStatistic``; theta is not an input:
  gbstats computes it from both arms pooled (``compute_theta``), as its runner does.

In "ratio"/"cuped" an inner base statistic may leave out "n"; it then takes the outer "n".

A result (values exactly as gbstats' ``compute_result()`` returns them, None where the test
does not produce the field)::

    {"expected", "ci_low", "ci_high",      # point estimate of the lift and its CI
     "p_value",                            # frequentist and sequential
     "chance_to_win", "risk",              # bayesian; risk = [control, treatment] as gbstats
                                           #   returns it (expected loss of shipping each)
     "risk_type",                          # bayesian: "relative" | "absolute"
     "uplift_stddev",                      # standard error / posterior sd of the lift
     "theta",                              # cuped: the theta gbstats used (0 -> fell back
                                           #   to the unadjusted post statistic)
     "error_message"}                      # gbstats' message when it returned its default

Note: gbstats' ``compute_result()`` returns a default, expected=0, ci=[0, 0] (p_value=1, or
chance_to_win=0.5, risk=[0, 0]) with an error_message, when the control mean is 0 (frequentist:
for either difference type; bayesian: relative only), an arm has n=0 (bayesian) or a variance
is <= 0. This script passes that through unchanged (gbstats' full runner,
``gbstats.gbstats.analyze_metric_df``, then puts the raw relative difference in expected).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig, GaussianPrior
from gbstats.frequentist.tests import (
    FrequentistConfig,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import (
    ProportionStatistic,
    RatioStatistic,
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
)

KINDS = ("mean", "ratio", "cuped")
TESTS = ("frequentist", "sequential", "bayesian")
DIFFERENCES = ("relative", "absolute")
REQUIRED_KEYS = {"kind", "test", "difference", "control", "treatment"}
OPTIONAL_KEYS = {"alpha", "sequential_tuning", "prior", "prior_type", "inverse"}


def _exact_keys(d: dict[str, Any], required: set[str], optional: set[str], what: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{what}: expected an object, got {d!r}")
    missing, extra = required - d.keys(), d.keys() - required - optional
    if missing or extra:
        raise ValueError(f"{what}: missing keys {sorted(missing)}; unknown keys {sorted(extra)}")


def _base(d: dict[str, Any], what: str, n: int | None = None):
    """SampleMeanStatistic if sum_squares is given, else ProportionStatistic."""
    if isinstance(d, dict) and n is not None and "n" not in d:
        d = {**d, "n": n}
    if isinstance(d, dict) and "sum_squares" in d:
        _exact_keys(d, {"n", "sum", "sum_squares"}, set(), what)
        return SampleMeanStatistic(n=d["n"], sum=d["sum"], sum_squares=d["sum_squares"])
    _exact_keys(d, {"n", "sum"}, set(), what)
    return ProportionStatistic(n=d["n"], sum=d["sum"])


def _statistic(kind: str, d: dict[str, Any], what: str):
    if kind == "mean":
        return _base(d, what)
    if kind == "ratio":
        _exact_keys(d, {"n", "m_statistic", "d_statistic", "m_d_sum_of_products"}, set(), what)
        return RatioStatistic(
            n=d["n"],
            m_statistic=_base(d["m_statistic"], f"{what}.m_statistic", d["n"]),
            d_statistic=_base(d["d_statistic"], f"{what}.d_statistic", d["n"]),
            m_d_sum_of_products=d["m_d_sum_of_products"],
        )
    required = {"n", "post_statistic", "pre_statistic", "post_pre_sum_of_products"}
    _exact_keys(d, required, set(), what)
    return RegressionAdjustedStatistic(
        n=d["n"],
        post_statistic=_base(d["post_statistic"], f"{what}.post_statistic", d["n"]),
        pre_statistic=_base(d["pre_statistic"], f"{what}.pre_statistic", d["n"]),
        post_pre_sum_of_products=d["post_pre_sum_of_products"],
        theta=0,  # overwritten by gbstats (BaseABTest.__init__ -> compute_theta)
    )


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def run_case(case: dict[str, Any], i: int = 0) -> dict[str, Any]:
    what = f"case {i}"
    _exact_keys(case, REQUIRED_KEYS, OPTIONAL_KEYS, what)
    kind, test, difference = case["kind"], case["test"], case["difference"]
    if kind not in KINDS or test not in TESTS or difference not in DIFFERENCES:
        raise ValueError(f"{what}: kind/test/difference must be in {KINDS}/{TESTS}/{DIFFERENCES}")
    if test != "sequential" and "sequential_tuning" in case:
        raise ValueError(f"{what}: sequential_tuning is only for test=sequential")
    if test != "bayesian" and case.keys() & {"prior", "prior_type", "inverse"}:
        raise ValueError(f"{what}: prior/prior_type/inverse are only for test=bayesian")
    alpha = case.get("alpha", 0.05)
    stat_a = _statistic(kind, case["control"], f"{what}.control")  # gbstats' stat_a = control
    stat_b = _statistic(kind, case["treatment"], f"{what}.treatment")

    if test == "frequentist":
        config = FrequentistConfig(difference_type=difference, alpha=alpha)
        ab = TwoSidedTTest(stat_a, stat_b, config)
    elif test == "sequential":
        config = SequentialConfig(
            difference_type=difference,
            alpha=alpha,
            sequential_tuning_parameter=case.get("sequential_tuning", 5000),
        )
        ab = SequentialTwoSidedTTest(stat_a, stat_b, config)
    else:
        prior = case.get("prior", {})
        _exact_keys(prior, set(), {"mean", "variance", "proper"}, f"{what}.prior")
        config = EffectBayesianConfig(
            difference_type=difference,
            alpha=alpha,
            inverse=case.get("inverse", False),
            prior_type=case.get("prior_type", "relative"),
            prior_effect=GaussianPrior(**prior),
        )
        ab = EffectBayesianABTest(stat_a, stat_b, config)

    res = ab.compute_result()
    bayes = test == "bayesian"
    return {
        "expected": _num(res.expected),
        "ci_low": _num(res.ci[0]),
        "ci_high": _num(res.ci[1]),
        "p_value": None if bayes else _num(res.p_value),
        "chance_to_win": _num(res.chance_to_win) if bayes else None,
        "risk": [_num(r) for r in res.risk] if bayes else None,
        "risk_type": res.risk_type if bayes else None,
        "uplift_stddev": _num(res.uplift.stddev),
        "theta": _num(stat_a.theta) if isinstance(stat_a, RegressionAdjustedStatistic) else None,
        "error_message": res.error_message,
    }


def main() -> int:
    try:
        cases = json.load(sys.stdin)
        if not isinstance(cases, list):
            raise ValueError("stdin must be a JSON list of cases")
        results = [run_case(c, i) for i, c in enumerate(cases)]
    except (ValueError, TypeError, KeyError) as e:
        print(f"gbstats_ref: {e}", file=sys.stderr)
        return 2
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
