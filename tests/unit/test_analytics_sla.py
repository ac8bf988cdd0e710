"""SLA section: latency percentiles per variant, uptime from the window's probes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.analytics import sla
from tests.unit.analytics_cases import ago, reco_log, window


def test_latency_per_variant_and_uptime_in_the_window():
    reco = reco_log([(10, 1, "A", [1]), (20, 2, "B", [2]), (30, 3, "A", [3]),
                     (90, 4, "A", [4])])  # latencies 10, 11, 12, 13 ms; the last outside
    probes = pd.DataFrame({"ts": [ago(m).isoformat() for m in (5, 15, 25, 90)],
                           "ok": [True, False, True, False]})
    out = sla.compute(reco, window(reco), probes)
    assert list(out.latency_ms) == ["A", "B", "all"]
    assert out.latency_ms["A"].p50 == 11.0 and out.latency_ms["B"].p99 == 11.0
    assert out.latency_ms["all"].p95 == pytest.approx(np.percentile([10, 11, 12], 95))
    assert out.probes == 3 and out.uptime == pytest.approx(2 / 3)
    assert out.error_rate == pytest.approx(1 / 3)


def test_no_probes_no_uptime():
    reco = reco_log([])
    out = sla.compute(reco, window(reco), None)
    assert out.probes == 0 and out.uptime is None and out.error_rate is None
    assert out.latency_ms["all"].p50 is None and list(out.latency_ms) == ["all"]
