"""Every dashboard page runs under Streamlit's AppTest on fixture data and raises nothing;
chart builders return valid Vega-Lite specs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from backend.analytics.engine import AnalyticsLogic
from backend.analytics.snapshot import Snapshot, VariantDrift
from backend.core.layout import Keys
from backend.core.settings import AnalyticsSettings
from dashboard import charts, data
from tests.conftest import free_port
from tests.unit.test_analytics_engine import END, ITEMS, USERS, make_log

PAGES = Path(__file__).resolve().parents[2] / "dashboard" / "app_pages"


def snapshot() -> Snapshot:
    _, log, watch, rating = make_log()
    return AnalyticsLogic(AnalyticsSettings(window_minutes=60, echo_windows=2)).snapshot(
        log, watch, rating, ITEMS, USERS, END)


NOW = pd.Timestamp.now(tz="UTC").floor("min")
RETRAIN_RUN = {"kind": "retrain", "id": "reco-retrain-1", "start": 1.7e9, "end": 1.7e9 + 30,
               "outcome": "SUCCEEDED", "production": {"A": "v0002", "B": "v0001"},
               "result": {"A": {"version": "v0002", "promoted": True, "reasons": [],
                                "forecast_slope": -0.002},
                          "B": {"version": "v0002", "promoted": False,
                                "reasons": ["forecast Gini slope +0.0200/cycle exceeds"],
                                "forecast_slope": 0.02}}}


def lake_fixture(root: Path) -> None:
    """Ratings in the last minutes and three dead letters, written as the ingest job would."""
    from backend.data.batch import validate
    from backend.data.events import DlqEvent, RatingEvent
    from backend.data.lake import Lake

    def landed(model, recs):
        frame = validate(model, recs).valid.drop(columns="_pos")
        return frame.assign(kafka_partition=0, kafka_offset=range(len(frame)))

    lake = Lake(root)
    lake.write("events.rating", landed(RatingEvent, [
        {"event_id": str(uuid.uuid4()), "ts": (NOW - pd.Timedelta(minutes=i % 3)).isoformat(),
         "user_id": i + 1, "item_id": 5, "rating": 3} for i in range(30)]))
    lake.write("events.dlq", landed(DlqEvent, [
        {"event_id": str(uuid.uuid4()), "ts": NOW.isoformat(), "source_topic": "events.rating",
         "partition": 0, "offset": i, "raw": "{", "error": why} for i, why in
        enumerate(["malformed JSON: x\ndetail", "malformed JSON: y", "oversized: 20000"])]))


@pytest.fixture
def var(tmp_path, monkeypatch):
    """A var dir with one snapshot and a registry; the API port has nobody on it."""
    from backend.core.settings import Settings
    from backend.ml.recommenders import DiversityKNN, ItemKNN
    from registry import open_registry
    from tests.unit.test_recommenders import dataset

    snap = snapshot()
    out = tmp_path / "analytics"
    (out / "snapshots").mkdir(parents=True)
    for path in (out / "latest.json", out / "snapshots" / "20240301T120000Z.json"):
        path.write_text(snap.model_dump_json())
    monkeypatch.setenv("RECO_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("RECO_SERVE__PORT", str(free_port()))
    registry = open_registry(Settings(var_dir=tmp_path), signer=True)
    for variant, model in (("A", ItemKNN()), ("B", DiversityKNN())):
        registry.promote(variant, registry.register(variant, model.fit(*dataset())))
    lake_fixture(tmp_path / "lake")
    Settings(var_dir=tmp_path).shared_store().log(Keys.schedule_runs).append(RETRAIN_RUN)
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
    snap = Snapshot.model_validate_json((var / "analytics" / "latest.json").read_text())
    at = AppTest.from_file(str(PAGES / "overview.py"), default_timeout=60).run()
    shown = {m.label: m.value for m in at.metric}
    active = snap.counts.traffic_minutes
    assert 0 < active < snap.window.minutes
    assert shown["recommendations/s"] == \
        f"{snap.counts.recommendations / (active * 60):.2f}"
    at = AppTest.from_file(str(PAGES / "fairness.py"), default_timeout=60).run()
    shown = {m.label: m.value for m in at.metric}
    assert shown["A: catalog coverage"] == f"{snap.fairness['A'].coverage:.3f}"


def test_chart_builders_return_valid_specs():
    snap = snapshot()
    built = [
        charts.metric_bars(data.fairness_frame(snap), "t"),
        charts.segment_bars(data.segment_frame(snap), "gender"),
        charts.window_lines(data.echo_frame(snap), "gini"),
        charts.group_rates(data.tail_frame(snap)),
        charts.rating_counts(*data.spam_distribution(snap)),
        charts.interval_bars(data.arms_frame(snap)),
        charts.p_value_line(data.sequential_frame(snap), 0.05),
        charts.history_lines(data.history_frame([snap]), "gini"),
        charts.rating_shift(data.rating_shift_frame(snap)),
        charts.lorenz_lines(data.lorenz_frame(snap)),
        charts.group_history(data.group_history(data.history_frame([snap, snap]))),
        charts.counter_bars(pd.DataFrame({"status": ["401"], "value": [2.0]}), "status", "t"),
        charts.rate_lines(data.event_rates(pd.DataFrame(
            {"topic": ["events.rating"] * 3, "ts": [NOW] * 3}), 60)),
    ]
    for chart in built:
        spec = chart.to_dict()  # validates against the Vega-Lite schema
        assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    assert set(data.fairness_frame(snap)["variant"]) == {"A", "B", "all"}
    assert len(data.sequential_frame(snap)) == 12


def test_a_variant_has_one_colour_on_every_chart_and_legends_list_only_those_shown():
    snap = snapshot()
    scales = [charts.interval_bars(data.arms_frame(snap)).to_dict()["layer"][0],
              charts.p_value_line(data.sequential_frame(snap), 0.05).to_dict()["layer"][0],
              charts.history_lines(data.history_frame([snap]), "gini").to_dict()]
    colours = [dict(zip(c["encoding"]["color"]["scale"]["domain"],
                        c["encoding"]["color"]["scale"]["range"], strict=True)) for c in scales]
    assert all(c["B"] == charts.COLORS["B"] for c in colours), colours
    assert "C" not in colours[1] and "all" not in colours[1]  # only the arms shown
    other = charts.variant_scale(pd.Series(["A", "treat-2", "treat-1"])).to_dict()
    assert other["domain"] == ["A", "treat-1", "treat-2"]
    assert other["range"] == [charts.COLORS["A"], *charts.EXTRA[:2]]


def test_the_app_navigates_to_its_default_page(var):
    app = Path(__file__).resolve().parents[2] / "dashboard" / "streamlit_app.py"
    at = AppTest.from_file(str(app), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Overview"


def test_stream_and_models_pages_show_rates_dead_letters_and_runs(var):
    at = AppTest.from_file(str(PAGES / "stream.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = {m.label: m.value for m in at.metric}
    assert shown["dead letters (all time)"] == "3" and shown["events.rating"] == "30"
    reasons = at.dataframe[0].value
    assert dict(zip(reasons["reason"], reasons["count"], strict=True)) == {
        "malformed JSON: x": 1, "malformed JSON: y": 1, "oversized: 20000": 1}
    at = AppTest.from_file(str(PAGES / "models.py"), default_timeout=60).run()
    runs = at.dataframe[-1].value
    assert runs.loc[0, "promoted"] == "A v0002"
    assert "forecast Gini slope" in runs.loc[0, "refused"]


def test_event_rates_and_request_rate_are_computed_not_typed():
    times = pd.DataFrame({"topic": ["events.rating"] * 120 + ["events.watch"] * 60,
                          "ts": [NOW] * 120 + [NOW - pd.Timedelta(minutes=1)] * 60})
    rates = data.event_rates(times, 60).set_index(["topic", "minute"])["per_second"]
    assert rates[("events.rating", NOW)] == 2.0 and rates[("events.watch",
                                                           NOW - pd.Timedelta(minutes=1))] == 1.0
    prom = pd.DataFrame({"name": ["reco_requests_total"] * 2 + ["other"], "value": [50, 70, 9]})
    rate, state = data.request_rate(prom, None, 100.0)
    assert rate is None and state == (100.0, 120.0)
    later = prom.assign(value=[80, 100, 9])
    rate, state = data.request_rate(later, state, 110.0)
    assert rate == 6.0 and state == (110.0, 180.0)
    assert data.request_rate(pd.DataFrame(), state, 120.0) == (None, None)


def test_demo_captions_and_stitching_commands():
    from backend.ops.demo import ffmpeg_commands, srt

    text = srt([("Overview", 0, 8), ("Fairness", 8, 16)])
    assert text.startswith("1\n00:00:00,000 --> 00:00:08,000\nOverview\n\n2\n00:00:08,000")
    video, gif = ffmpeg_commands(Path("/f"), Path("/o"))
    assert video[-1] == "/o/demo.mp4" and "-framerate" in video and "libx264" in video
    assert gif[-1] == "/o/preview.gif"


def test_loaders_return_typed_snapshots_and_skip_unreadable_files(var):
    out = var / "analytics"
    snap = data.latest_snapshot()
    assert isinstance(snap, Snapshot) and snap == snapshot()
    body = json.loads((out / "latest.json").read_text())
    # a file of an older run (echo variants inline, no compute_seconds) still loads
    older = body | {"echo": {k: v for k, v in body["echo"].items() if k != "variants"}
                    | body["echo"]["variants"]}
    (out / "snapshots" / "20240301T110000Z.json").write_text(json.dumps(older))
    (out / "snapshots" / "20240301T113000Z.json").write_text('{"window": {"end": "x"}}')
    (out / "snapshots" / "20240301T114500Z.json").write_text('{"window": ')  # torn
    history = data.snapshot_history()
    assert history == [snap, snap]  # the older file and the fixture; the others skipped
    assert data.history_frame(history)["variant"].tolist() == ["A", "B", "all"] * 2
    (out / "latest.json").write_text("{}")
    st.cache_data.clear()
    assert data.latest_snapshot() is None


def test_frame_builders_read_the_snapshot():
    snap = snapshot()
    tail = data.tail_frame(snap).set_index(["variant", "group"])["rate"]
    assert tail["A", "tail"] == snap.tail["A"].rates.tail and len(tail) == 9
    exposure = data.tail_frame(snap).set_index(["variant", "group"])["exposure"]
    assert exposure["B", "head"] == snap.tail["B"].exposure_share.head
    assert data.trend_text(snap.echo.variants["A"].gini_trend) == (
        "not enough data", "not enough data: 2 of 3 windows with data")
    arms = data.arms_frame(snap).set_index("variant")
    assert arms.loc["B", "watch_through"] == snap.ab.arms["B"].watch_through
    assert arms.loc["A", "wt_low"] == snap.ab.arms["A"].watch_through_ci[0]
    echo = data.echo_frame(snap)
    assert set(echo["metric"]) <= set(data.ECHO_METRICS)
    gini = echo[echo["metric"] == "gini"].set_index(["variant", "window"])
    assert gini["value"].to_dict() == {(v, i): x for v, e in snap.echo.variants.items()
                                       for i, x in enumerate(e.gini) if x is not None}
    assert gini["sd"].to_dict() == {(v, i): x for v, e in snap.echo.variants.items()
                                    for i, x in enumerate(e.gini_sd) if x is not None}
    users = data.spam_users_frame(snap)
    assert users["user_id"].tolist() == [u.user_id for u in snap.spam.users]
    hist, flagged, lines = data.spam_distribution(snap)
    assert hist["users"].sum() == snap.spam.raters  # every rater, not only the loudest
    assert set(flagged["user_id"]) == set(snap.spam.flagged.combined)
    assert lines.set_index("rule")["x"].to_dict() == {
        k: v for k, v in (("3-sigma", snap.spam.three_sigma_line),
                          ("robust z", snap.spam.robust_line)) if v is not None}
    detectors = data.detector_frame(snap)
    assert detectors["detector"].tolist()[-1] == "combined"
    assert data.fmt(None) == "-" and data.fmt(0.25, ".1%") == "25.0%"
    assert data.interval_text(1.234, 5.0) == "[1.23, 5.00]"
    assert data.interval_text(None, 2.0) == "not available"


def test_ab_page_shows_the_audit_trail_newest_first(var):
    from backend.core.settings import Settings
    from registry import open_experiments

    store = open_experiments(Settings())
    store.record("split", "key:ops", {"split": 0.7, "salt": "exp-1"})
    store.record("promote", "cli:root", {"variant": "A", "version": "v0001"})
    at = AppTest.from_file(str(PAGES / "abtest.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    trail = at.dataframe[-1].value
    assert list(trail["action"]) == ["promote", "split"]
    assert list(trail["actor"]) == ["cli:root", "key:ops"]


def test_ab_page_shows_an_experiments_comparisons_epochs_and_guardrails(var):
    from backend.analytics import experiment
    from tests.unit.test_analytics_experiment import fair, three_arm_case

    reco, win, exp, probes = three_arm_case()
    ab = experiment.compute(AnalyticsSettings(), 0.5, reco, win, {v: fair() for v in "ABC"},
                            record=exp, probes=probes)
    snap = snapshot().model_copy(update={"ab": ab})
    (var / "analytics" / "latest.json").write_text(snap.model_dump_json())
    st.cache_data.clear()
    at = AppTest.from_file(str(PAGES / "abtest.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    frames = [d.value for d in at.dataframe]
    comparisons = next(f for f in frames if "holm_p" in f.columns)
    assert list(comparisons["arm"]) == ["B", "C"]
    assert comparisons["lift"].tolist() == [
        ab.comparisons[t].watch_through_test.relative for t in ("B", "C")]
    epochs = next(f for f in frames if "srm_p" in f.columns)
    assert list(epochs["epoch"]) == [0, 1] and list(epochs["end"])[-1] == "in force"
    guards = next(f for f in frames if "passed" in f.columns)
    assert set(guards["metric"]) == {"latency_p95_ms", "error_rate"}
    assert any("Experiment e1" in c.value for c in at.caption)


def test_controls_only_for_a_signed_in_operator(var):
    later = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1)).isoformat()
    sessions = {"none": None,
                "viewer": {"account": "victor", "role": "viewer", "token": "t",
                           "expires_at": later},
                "operator": {"account": "alice", "role": "operator", "token": "t",
                             "expires_at": later},
                "expired": {"account": "alice", "role": "operator", "token": "t",
                            "expires_at": "2020-01-01T00:00:00+00:00"}}
    for who, session in sessions.items():
        for page, button in (("models.py", "promote (verifies first)"),
                             ("models.py", "retrain now"), ("abtest.py", "apply split"),
                             ("stream.py", "replay")):
            at = AppTest.from_file(str(PAGES / page), default_timeout=60)
            if session is not None:
                at.session_state["console_session"] = session
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            labels = [b.label for b in at.button]
            captions = " ".join(c.value for c in at.caption)
            if who == "operator":
                assert button in labels, (who, page, labels)
            else:
                assert button not in labels and "Sign in as an operator" in captions, (
                    who, page, labels)


def test_audit_filters():
    frame = pd.DataFrame({"ts": ["3", "2", "1"], "actor": ["user:alice", "key:ops", "user:bo"],
                          "action": ["split", "promote", "split"], "experiment": "",
                          "detail": ['{"split": 0.3}', '{"variant": "A"}', '{"split": 1}']})
    assert data.filter_audit(frame, [], []).equals(frame)
    assert data.filter_audit(frame, ["user:alice", "user:bo"], ["split"])["ts"].tolist() == [
        "3", "1"]
    assert data.filter_audit(frame, [], [], "VARIANT")["actor"].tolist() == ["key:ops"]
    assert data.filter_audit(frame, [], [], "user:")["ts"].tolist() == ["3", "1"]


def test_overview_trends_need_two_snapshots_and_then_draw_sparklines(var):
    """One snapshot: "not enough data for trends"; two: a tile per figure with its line."""
    at = AppTest.from_file(str(PAGES / "overview.py"), default_timeout=60).run()
    assert not at.exception
    assert any("Not enough data for trends" in m.value for m in at.info)
    snap = Snapshot.model_validate_json((var / "analytics" / "latest.json").read_text())
    for minutes in (20, 10):  # two snapshots inside the selected hour
        end = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=minutes)
        later = snap.model_copy(update={"window": snap.window.model_copy(
            update={"end": end.isoformat()})})
        (var / "analytics" / "snapshots" / f"{end:%Y%m%dT%H%M%SZ}.json").write_text(
            later.model_dump_json())
    st.cache_data.clear()
    at = AppTest.from_file(str(PAGES / "overview.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    tiles = {m.label: m for m in at.metric}
    assert tiles["coverage A"].value == f"{snap.fairness['A'].coverage:.3f}"
    p95 = snap.sla.latency_ms["A"].p95
    target = AnalyticsSettings().sla_p95_ms
    assert p95 is not None and tiles["p95 latency A"].delta == (
        f"{abs(p95 - target):.1f} ms {'over' if p95 > target else 'under'} the SLA")
    history = data.history_frame(data.snapshot_history())
    assert data.sparkline(data.in_range(history, 60), "A", "coverage") == [
        snap.fairness["A"].coverage] * 2
    assert data.sparkline(history.iloc[:0], "A", "coverage") is None


def test_drift_reads_psi_by_its_bands_and_shows_both_histograms():
    assert [data.psi_verdict(x) for x in (None, 0.02, 0.1, 0.3)] == [
        "not enough data", "stable", "moderate shift", "major shift"]
    snap = snapshot()
    frame = data.rating_shift_frame(snap)
    for period, hist in (("before the window", snap.drift.rating_hist_train),
                         ("in the window", snap.drift.rating_hist_now)):
        rows = frame[frame["period"] == period]
        assert rows["ratings"].tolist() == (hist if sum(hist) else [])
        if sum(hist):
            assert abs(rows["share"].sum() - 1) < 1e-9



def test_drift_per_variant_rows_and_history_read_the_variants_own_psi():
    snap = snapshot().model_copy(update={"drift": snapshot().drift.model_copy(update={
        "by_variant": {"B": VariantDrift(rating_psi=None, popularity_psi=0.3, ratings_now=9,
                                         interactions_now=40),
                       "A": VariantDrift(rating_psi=0.05, popularity_psi=None,
                                         ratings_now=900, interactions_now=2000)}})})
    frame = data.drift_frame(snap)
    assert frame["variant"].tolist() == ["A", "B"]
    assert frame["rating_reading"].tolist() == ["stable", "not enough data"]
    assert frame["popularity_reading"].tolist() == ["not enough data", "major shift"]
    history = data.history_frame([snap])
    by = history.set_index("variant")
    assert by.loc["B", "popularity_psi"] == 0.3 and pd.isna(by.loc["A", "popularity_psi"])
    assert (by.loc["all", "rating_psi"] == snap.drift.rating_psi
            or pd.isna(by.loc["all", "rating_psi"]) and snap.drift.rating_psi is None)
    assert data.drift_frame(snapshot().model_copy(update={"drift": snap.drift.model_copy(
        update={"by_variant": {}})})).empty

def test_lorenz_frame_holds_each_variants_curve_from_the_snapshot():
    snap = snapshot()
    frame = data.lorenz_frame(snap)
    for v, f in snap.fairness.items():
        rows = frame[frame["variant"] == v]
        assert rows["exposure_share"].tolist() == f.exposure_lorenz and len(rows) == 21
        assert rows["items_share"].iloc[-1] == 1.0


def test_group_history_holds_the_snapshots_exposure_shares():
    snap = snapshot()
    long = data.group_history(data.history_frame([snap]))
    shown = {v: t for v, t in snap.tail.items() if t.exposure_share is not None}
    assert shown and set(long["variant"]) == set(shown) & set(snap.fairness)
    for v, t in shown.items():
        assert t.exposure_share is not None
        mine = long[long["variant"] == v].set_index("group")["share"]
        assert mine.to_dict() == {"head": t.exposure_share.head, "mid": t.exposure_share.mid,
                                  "tail": t.exposure_share.tail}


def test_a_versions_verdict_is_kept_until_its_stored_files_change(tmp_path, monkeypatch):
    """The Models page re-reads a version's files only when they or the key changed: three
    refreshes verify once; a flipped byte, then another public key, are verified again."""
    from backend.core.settings import Settings
    from backend.ml.recommenders import Popularity
    from registry import open_registry
    from registry.signing import ensure_keys
    from tests.unit.test_recommenders import dataset

    registry = open_registry(Settings(var_dir=tmp_path / "var"), signer=True)
    version = registry.register("A", Popularity().fit(*dataset()))
    calls, verify = [], registry.verify
    monkeypatch.setattr(registry, "verify", lambda *a: calls.append(a) or verify(*a))
    for _ in range(3):
        manifest, why = data.verified(registry, "A", version)
        assert manifest is not None and manifest.version == version and why == ""
    assert len(calls) == 1
    model = registry.store.root / "registry" / "A" / version / "model.npz"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 1
    model.write_bytes(bytes(raw))
    manifest, why = data.verified(registry, "A", version)
    assert manifest is None and "does not match its digest" in why and len(calls) == 2
    _, foreign = ensure_keys(tmp_path / "other-keys")  # the key replaced: asked again
    registry.public_key.write_bytes(foreign.read_bytes())
    manifest, why = data.verified(registry, "A", version)
    assert manifest is None and "signature" in why and len(calls) == 3


def test_history_lists_only_the_snapshots_of_its_range(tmp_path, monkeypatch):
    """A key names its window's end: the history of the last hour lists from an hour ago
    on, not the whole retention's keys, and a window ending on the cut is in."""
    from backend.core.store import Store

    store = Store.local(tmp_path)
    snap = snapshot()
    ends = [NOW - pd.Timedelta(minutes=m) for m in (600, 61, 60, 30, 0)]
    for end in ends:
        store.put(Keys.snapshot(end.strftime("%Y%m%dT%H%M%SZ")), snap.model_dump_json().encode())
    listed: list[str | None] = []
    keys = store.keys
    monkeypatch.setattr(store, "keys", lambda prefix, after=None: listed.append(after) or
                        keys(prefix, after))
    assert len(data.snapshots(store, since=NOW - pd.Timedelta(minutes=60))) == 3
    assert len(data.snapshots(store, since=(NOW - pd.Timedelta(minutes=60)).tz_localize(None))) == 3
    assert len(data.snapshots(store, limit=2, since=NOW - pd.Timedelta(days=1))) == 2
    assert len(data.snapshots(store)) == 5
    assert listed[0] == f"{Keys.snapshots}/{(NOW - pd.Timedelta(minutes=60)):%Y%m%dT%H%M%SZ}"
    assert listed[-1] is None
