"""Every dashboard page runs under Streamlit's AppTest on fixture data and raises nothing;
chart builders return valid Vega-Lite specs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from backend.analytics import AnalyticsLogic
from backend.settings import AnalyticsSettings
from dashboard import charts, data
from tests.conftest import free_port
from tests.unit.test_analytics_engine import END, ITEMS, USERS, make_log

PAGES = Path(__file__).resolve().parents[2] / "dashboard" / "app_pages"


def snapshot() -> dict:
    _, log, watch, rating = make_log()
    return AnalyticsLogic(AnalyticsSettings(window_minutes=60, echo_windows=2)).snapshot(
        log, watch, rating, ITEMS, USERS, END)


@pytest.fixture
def var(tmp_path, monkeypatch):
    """A var dir with one snapshot and a registry; the API port has nobody on it."""
    from backend.recommenders import DiversityKNN, ItemKNN
    from backend.settings import Settings
    from registry import open_registry
    from tests.unit.test_recommenders import dataset

    snap = snapshot()
    out = tmp_path / "analytics"
    (out / "snapshots").mkdir(parents=True)
    for path in (out / "latest.json", out / "snapshots" / "20240301T120000Z.json"):
        path.write_text(json.dumps(snap))
    monkeypatch.setenv("RECO_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("RECO_SERVE__PORT", str(free_port()))
    registry = open_registry(Settings(var_dir=tmp_path), signer=True)
    for variant, model in (("A", ItemKNN()), ("B", DiversityKNN())):
        registry.promote(variant, registry.register(variant, model.fit(*dataset()), {}, {}))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield tmp_path
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.mark.parametrize("page", sorted(p.name for p in PAGES.glob("*.py")))
def test_every_page_renders_fixture_data_without_errors(var, page):
    at = AppTest.from_file(str(PAGES / page), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title and at.title[0].value


def test_pages_say_what_to_start_when_there_is_no_data(tmp_path, monkeypatch):
    monkeypatch.setenv("RECO_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("RECO_SERVE__PORT", str(free_port()))
    st.cache_data.clear()
    st.cache_resource.clear()
    for page in sorted(PAGES.glob("*.py")):
        at = AppTest.from_file(str(page), default_timeout=60).run()
        assert not at.exception, (page.name, [e.value for e in at.exception])
        shown = " ".join(m.value for m in [*at.info, *at.error, *at.caption])
        if page.name != "stream.py":  # the stream page shows the (empty) lake
            assert "make up" in shown or "reco" in shown, page.name
    st.cache_data.clear()
    st.cache_resource.clear()


def test_overview_figures_match_the_snapshot(var):
    snap = json.loads((var / "analytics" / "latest.json").read_text())
    at = AppTest.from_file(str(PAGES / "overview.py"), default_timeout=60).run()
    shown = {m.label: m.value for m in at.metric}
    minutes = snap["window"]["minutes"]
    assert shown["requests/s"] == f"{snap['counts']['recommendations'] / (minutes * 60):.2f}"
    at = AppTest.from_file(str(PAGES / "fairness.py"), default_timeout=60).run()
    shown = {m.label: m.value for m in at.metric}
    assert shown["A: catalog coverage"] == f"{snap['fairness']['A']['coverage']:.3f}"


def test_chart_builders_return_valid_specs():
    snap = snapshot()
    built = [
        charts.metric_bars(data.fairness_frame(snap), "t"),
        charts.segment_bars(data.segment_frame(snap), "gender"),
        charts.window_lines(data.echo_frame(snap), "gini"),
        charts.group_rates(data.tail_frame(snap)),
        charts.rating_counts(pd.DataFrame({"user_id": [1, 2], "count": [3, 40],
                                           "flagged": [False, True]}), 20.0),
        charts.interval_bars(data.arms_frame(snap)),
        charts.p_value_line(data.sequential_frame(snap), 0.05),
        charts.history_lines(data.history_frame([snap]), "gini"),
        charts.counter_bars(pd.DataFrame({"status": ["401"], "value": [2.0]}), "status", "t"),
    ]
    for chart in built:
        spec = chart.to_dict()  # validates against the Vega-Lite schema
        assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    assert set(data.fairness_frame(snap)["variant"]) == {"A", "B", "all"}
    assert len(data.sequential_frame(snap)) == 12


def test_the_app_navigates_to_its_default_page(var):
    app = Path(__file__).resolve().parents[2] / "dashboard" / "streamlit_app.py"
    at = AppTest.from_file(str(app), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Overview"
