"""lift.py against GrowthBook's engine (gbstats 0.8.0) on the same users: ratio, mean and
CUPED metrics; fixed-horizon, sequential and Bayesian; relative and absolute. The reference
runs in its own venv (`make test` builds it: var/refenv/gbstats)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.reference import gbstats_cases


def arm(rng: np.random.Generator, n: int, lift: float = 0.0) -> gbstats_cases.Arm:
    shown = np.maximum(1, rng.lognormal(3.0, 1.0, n).round()).astype(np.int64)
    p = rng.beta(1.0, 5.0, n)
    pre = rng.poisson(shown).clip(min=1)
    return {"shown": shown.astype(float),
            "watches": rng.binomial(shown, np.minimum(1, p * (1 + lift))).astype(float),
            "pre_shown": pre.astype(float),
            "pre_watches": rng.binomial(pre, p).astype(float)}


def test_every_figure_matches_gbstats_on_the_same_inputs():
    assert gbstats_cases.available(), (
        f"no reference env at {gbstats_cases.PYTHON}: `make test` builds it")
    rng = np.random.default_rng(16)
    arms = [(arm(rng, 400), arm(rng, 500, 0.05)), (arm(rng, 3000), arm(rng, 3000)),
            (arm(rng, 50), arm(rng, 40, 0.3))]
    diffs = gbstats_cases.differences(arms)
    assert len(diffs) >= 3 * 3 * 2 * 3 * 4  # arms x metrics x differences x tests x fields
    worst = max(diffs, key=lambda d: d[2])
    assert worst[2] == pytest.approx(0, abs=1e-9), worst
