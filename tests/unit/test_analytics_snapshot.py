"""The snapshot contract: JSON round trip, older files, missing figures, and the gauges read
from the typed object."""

from __future__ import annotations

import json

import pydantic
import pytest

from backend.analytics.cycle import GAUGE_NAMES, gauge_values
from backend.analytics.engine import AnalyticsLogic
from backend.analytics.snapshot import Arm, Echo, Snapshot, Trend
from backend.core.settings import AnalyticsSettings
from tests.unit.test_analytics_engine import END, ITEMS, USERS, make_log


def snapshot() -> Snapshot:
    _, log, watch, rating = make_log()
    return AnalyticsLogic(AnalyticsSettings(window_minutes=60, echo_windows=3)).snapshot(
        log, watch, rating, ITEMS, USERS, END)


def test_json_round_trip_keeps_every_figure():
    snap = snapshot()
    body = snap.model_dump(mode="json")
    assert list(body) == ["window", "counts", "fairness", "tail", "echo", "spam", "ab", "sla",
                          "drift", "compute_seconds"]
    assert body["fairness"]["A"]["requirements"]["coverage"]["pass"] is False  # as written
    assert Snapshot.model_validate_json(json.dumps(body)) == snap
    with pytest.raises(pydantic.ValidationError):  # frozen: what was computed stays
        snap.counts.watches = 0  # type: ignore[misc]


def test_older_files_load_and_unknown_keys_are_ignored():
    snap = snapshot()
    body = snap.model_dump(mode="json")
    echo = body["echo"]
    legacy = body | {"echo": {k: v for k, v in echo.items() if k != "variants"}
                     | echo["variants"], "added_later": {"x": 1}}
    legacy["ab"] = {k: v for k, v in body["ab"].items() if v is not None}
    del legacy["compute_seconds"]
    assert Snapshot.model_validate(legacy) == snap
    with pytest.raises(pydantic.ValidationError):
        Snapshot.model_validate(body | {"counts": {"watches": 3}})


def test_missing_figures_are_none_never_nan():
    trend = Trend(slope=0.0, ci_low=float("nan"), ci_high=float("inf"), windows=1,
                  detected=False)
    assert trend.ci_low is None and trend.ci_high is None
    arm = Arm(requests=1, users=1, recommended_items=0, watches=0, watch_through=None,
              watch_through_ci=(0.0, 1.0), ratings=0, mean_rating=None,
              mean_rating_ci=(float("nan"), float("nan")))
    assert arm.mean_rating_ci == (None, None)
    assert json.loads(arm.model_dump_json())["mean_rating_ci"] == [None, None]


def test_gauges_read_the_typed_snapshot():
    snap = snapshot()
    gauges = {(g.name, g.variant): g.value for g in gauge_values(snap)}
    assert {name for name, _ in gauges} <= set(GAUGE_NAMES)
    for v, f in snap.fairness.items():
        assert gauges["coverage", v] == f.coverage and gauges["gini", v] == f.gini
        # a slope only with enough windows: no sample otherwise
        assert gauges.get(("echo_gini_slope", v)) == snap.echo.variants[v].gini_trend.slope
        tail = snap.tail[v]
        assert gauges.get(("tail_starved", v)) == (
            float(tail.starved) if tail.head_tail_ratio is not None or tail.starved else None)
        latency = snap.sla.latency_ms.get(v)
        assert gauges.get(("latency_p95_ms", v)) == (latency.p95 if latency else None)
    assert ("latency_p95_ms", "A") in gauges
    srm = snap.ab.srm
    assert gauges.get(("srm_mismatch", "all")) == (
        float(srm.mismatch) if srm and srm.p_value is not None else None)
    assert gauges["watch_through", "A"] == snap.ab.arms["A"].watch_through
    assert gauges["ab_p_value", "B"] == snap.ab.comparisons["B"].sequential.p_value
    assert gauges["spam_flagged", "all"] == len(snap.spam.flagged.combined)
    assert ("uptime", "all") not in gauges  # no probes: no uptime sample
    assert next(iter(gauge_values(snap))).tags == {"variant": "A"}


def test_gauges_skip_figures_the_window_lacks():
    snap = snapshot()
    rising = Trend(slope=0.02, ci_low=0.015, ci_high=0.025, windows=4, detected=True)
    series = snap.echo.variants["A"].model_copy(update={"gini_trend": rising})
    echo = snap.echo.model_copy(update={"variants": snap.echo.variants | {"A": series}})
    gauges = {(g.name, g.variant): g.value
              for g in gauge_values(snap.model_copy(update={"echo": echo}))}
    assert gauges["echo_gini_slope", "A"] == 0.02 and gauges["echo_rising", "A"] == 1.0
    assert ("echo_rising", "B") not in gauges  # no slope: not enough windows, no state
    a = snap.fairness["A"].model_copy(update={"diversity": None})
    echo = Echo.model_validate(snap.echo.model_dump() | {"variants": {}})
    names = {(g.name, g.variant) for g in gauge_values(
        snap.model_copy(update={"fairness": {"A": a}, "echo": echo}))}
    assert ("coverage", "A") in names and ("diversity", "A") not in names
    assert ("echo_gini_slope", "A") not in names and ("coverage", "B") not in names
