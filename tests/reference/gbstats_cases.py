"""lift.py and gbstats on the same inputs: builds gbstats cases from per-user arms, runs them in
the reference environment (gbstats_ref.py, see README.md) and returns the largest absolute
difference. Used by tests/unit/test_lift_gbstats.py and bench/abtest.py."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backend.ml.metrics import lift

HERE = Path(__file__).resolve().parent
PYTHON = Path(os.environ.get("RECO_GBSTATS_PYTHON",
                             HERE.parents[1] / "var" / "refenv" / "gbstats" / "bin" / "python"))
FIELDS = ("expected", "ci_low", "ci_high", "p_value", "chance_to_win", "risk_control",
          "risk_treatment")
Arm = dict[str, np.ndarray]  # watches, shown, pre_watches, pre_shown per user


def available() -> bool:
    return PYTHON.exists()


def _base(x: np.ndarray) -> dict[str, float]:
    return {"n": len(x), "sum": float(x.sum()), "sum_squares": float((x * x).sum())}


def _ratio(m: np.ndarray, d: np.ndarray) -> dict[str, Any]:
    return {"n": len(m), "m_statistic": _base(m), "d_statistic": _base(d),
            "m_d_sum_of_products": float((m * d).sum())}


def _cuped(post: np.ndarray, pre: np.ndarray) -> dict[str, Any]:
    return {"n": len(post), "post_statistic": _base(post), "pre_statistic": _base(pre),
            "post_pre_sum_of_products": float((post * pre).sum())}


def cases(c: Arm, t: Arm, alpha: float = 0.05) -> Iterator[tuple[dict[str, Any], dict]]:
    """(gbstats case, lift.py's figures) pairs: the ratio metric (watch-through), a mean
    metric (watches per user) and the mean metric with CUPED, under each test."""
    ratio = (lift.RatioStat.of(c["watches"], c["shown"]),
             lift.RatioStat.of(t["watches"], t["shown"]))
    mean = lift.MeanStat.of(c["watches"]), lift.MeanStat.of(t["watches"])
    adjusted = lift.cuped((c["watches"], c["pre_watches"]), (t["watches"], t["pre_watches"]))
    arms: dict[str, tuple[dict[str, Any], tuple[lift.Stat, lift.Stat]]]
    arms = {"ratio": ({"control": _ratio(c["watches"], c["shown"]),
                       "treatment": _ratio(t["watches"], t["shown"])}, ratio),
            "mean": ({"control": _base(c["watches"]), "treatment": _base(t["watches"])}, mean),
            "cuped": ({"control": _cuped(c["watches"], c["pre_watches"]),
                       "treatment": _cuped(t["watches"], t["pre_watches"])}, adjusted)}
    for kind, (gb, (sc, st)) in arms.items():
        for relative in (True, False):
            difference = "relative" if relative else "absolute"
            base = {"kind": kind, "difference": difference, "alpha": alpha, **gb}
            f = lift.fixed_horizon(sc, st, relative=relative, alpha=alpha)
            yield {**base, "test": "frequentist"}, {
                "expected": f.estimate, "ci_low": f.ci_low, "ci_high": f.ci_high,
                "p_value": f.p_value}
            s = lift.always_valid(sc, st, relative=relative, alpha=alpha, tuning=5000)
            yield {**base, "test": "sequential", "sequential_tuning": 5000}, {
                "expected": s.estimate, "ci_low": s.ci_low, "ci_high": s.ci_high,
                "p_value": s.p_value}
            b = lift.bayesian(sc, st, relative=relative, interval=1 - alpha)
            yield {**base, "test": "bayesian"}, {
                "ci_low": b.ci_low, "ci_high": b.ci_high, "chance_to_win": b.chance_to_win,
                "risk_control": b.risk_control, "risk_treatment": b.risk_treatment}


def run_gbstats(batch: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = subprocess.run([str(PYTHON), str(HERE / "gbstats_ref.py")], check=True,
                         input=json.dumps(list(batch)), capture_output=True, text=True,
                         timeout=300)
    results: list[dict[str, Any]] = json.loads(out.stdout)
    for r in results:
        r["risk_control"], r["risk_treatment"] = r.get("risk") or (None, None)
    return results


def differences(arms: Sequence[tuple[Arm, Arm]]) -> list[tuple[str, str, float]]:
    """(case, field, |ours - gbstats|) for every figure both give."""
    pairs = [p for c, t in arms for p in cases(c, t)]
    theirs = run_gbstats([case for case, _ in pairs])
    out = []
    for (case, ours), ref in zip(pairs, theirs, strict=True):
        name = f"{case['kind']}/{case['test']}/{case['difference']}"
        assert ref["error_message"] is None, (name, ref["error_message"])
        for field in FIELDS:
            if field in ours:
                out.append((name, field, abs(float(ours[field]) - float(ref[field]))))
    return out


def compare(arms: Sequence[tuple[Arm, Arm]]) -> float | None:
    """The largest absolute difference, or None without the reference environment."""
    if not available():
        return None
    return max(d for _, _, d in differences(arms))
