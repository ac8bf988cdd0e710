"""SLA section: logged latency percentiles per variant and uptime from the cycle's health
probes (the `analytics/probes` log) inside the window."""

from __future__ import annotations

import pandas as pd

from backend.analytics.snapshot import Latency, Sla
from backend.analytics.window import LogWindow, RecoLog, naive_series
from backend.ml.metrics import ops


def compute(reco: RecoLog, win: LogWindow, probes: pd.DataFrame | None) -> Sla:
    """p50/p95/p99 per variant and over all; the share of probes that found the API up."""
    latency = {v: Latency.model_validate(ops.latency_percentiles(
        reco.latency[win.in_win & reco.arm(v)])) for v in win.variants}
    latency["all"] = Latency.model_validate(ops.latency_percentiles(reco.latency[win.in_win]))
    ok: list[bool] = []
    if probes is not None and len(probes):
        inside = win.during(naive_series(probes["ts"]))
        ok = probes.loc[inside, "ok"].astype(bool).tolist()
    up = ops.uptime(ok)
    return Sla(latency_ms=latency, probes=len(ok), uptime=up,
               error_rate=None if up is None else 1.0 - up)
