"""The quarantine lifecycle: detector flags with evidence, review, release and re-flag from
the admin API and the CLI (audited), training counting a released user's events again, and
automatic flags not undoing a release on the same evidence."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from backend.analytics import spam
from backend.analytics.snapshot import Spam, SpamFlags, SpamUser
from backend.core.errors import RecoError
from backend.core.store import Document, Store
from backend.ops.cli import main as cli
from backend.training.dataset import quarantined
from registry import open_experiments, open_quarantine
from registry.experiments import ExperimentStore
from registry.quarantine import Quarantine, QuarantineStore
from tests.unit.test_experiments import spec
from tests.unit.test_ingress_logic import ADMIN, Rig
from tests.unit.test_serving_api import call, key

EVIDENCE = {"detectors": ["robust_rdma", "robust_count"], "ratings": 300}


def test_detector_flags_keep_their_first_evidence(tmp_path):
    store = QuarantineStore(Store.local(tmp_path))
    start = datetime.now(UTC) - timedelta(hours=1)
    assert store.flag_detected({7: EVIDENCE, 8: {}}, start) == [7, 8]
    assert store.flag_detected({7: {"detectors": ["other"]}}, start) == []  # held already
    q = store.read()
    assert q.users == [7, 8] and store.held() == {7, 8}
    assert q.entries[7].evidence == EVIDENCE and q.entries[7].source == "detector"
    # the stored document keeps the older readers' list
    assert Document(Store.local(tmp_path), "analytics/quarantine").read()["users"] == [7, 8]


def test_a_release_holds_until_evidence_from_after_it(tmp_path):
    store = QuarantineStore(Store.local(tmp_path))
    before = datetime.now(UTC) - timedelta(minutes=30)
    store.flag_detected({7: EVIDENCE}, before)
    released = store.release(7, "key:ops", "a heavy but honest rater")
    assert released.status == "released" and released.actor == "key:ops"
    assert store.held() == set() and released.evidence == EVIDENCE
    # the next cycle's window still covers the ratings the operator judged: no re-flag
    assert store.flag_detected({7: EVIDENCE}, before) == []
    # a window that starts after the release is new evidence
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert store.flag_detected({7: {"detectors": ["robust_burst"]}}, after) == [7]
    assert store.read().entries[7].evidence == {"detectors": ["robust_burst"]}


def test_refusals_carry_their_status(tmp_path):
    store = QuarantineStore(Store.local(tmp_path))
    with pytest.raises(RecoError) as caught:
        store.release(5, "key:ops")
    assert caught.value.status_code == 404
    store.flag(5, "key:ops", "reported by a partner")
    with pytest.raises(RecoError) as caught:
        store.flag(5, "key:ops", "again")
    assert caught.value.status_code == 409
    entry = store.read().entries[5]
    assert (entry.source, entry.reason, entry.actor) == ("operator", "reported by a partner",
                                                         "key:ops")


def test_the_first_file_shape_still_reads(tmp_path):
    Document(Store.local(tmp_path), "analytics/quarantine").edit(lambda _: {
        "users": [3, 4], "updated": "20240301T120000Z", "source": "combined spam flag"})
    q = QuarantineStore(Store.local(tmp_path)).read()
    assert q.users == [3, 4] and q.entries[3].since == datetime(2024, 3, 1, 12, tzinfo=UTC)
    assert Quarantine.model_validate({"users": [9]}).users == [9]


def test_concurrent_writers_lose_no_flag(tmp_path):
    store = QuarantineStore(Store.local(tmp_path))
    start = datetime.now(UTC)
    threads = [threading.Thread(target=store.flag_detected, args=({u: {}}, start))
               for u in range(1, 41)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.held() == set(range(1, 41))
    assert store.flag_detected({5: {}}, start) == []  # no change: no new version
    assert len(store.doc.log.store.keys("analytics/quarantine")) == 20  # older ones pruned


def test_training_counts_a_released_user_again(settings):
    store = open_quarantine(settings)
    store.flag_detected({3: EVIDENCE, 4: EVIDENCE}, datetime.now(UTC))
    assert quarantined(settings) == {3, 4}
    store.release(3, "key:ops")
    assert quarantined(settings) == {4}


def test_evidence_names_the_detectors_and_scores():
    section = Spam(raters=3, flagged=SpamFlags(three_sigma=[7], robust_rdma=[7, 8],
                                               robust_count=[7], combined=[7]),
                   three_sigma_line=20.0,
                   users=[SpamUser(user_id=7, count=300, rdma=1.2, degsim=None, burst=150,
                                   combined=True)])
    assert spam.evidence(section, "2026-01-01 12:00:00+00:00") == {7: {
        "detectors": ["three_sigma", "robust_count", "robust_rdma"],
        "window_end": "2026-01-01 12:00:00+00:00", "ratings": 300, "rdma": 1.2,
        "degsim": None, "burst": 150, "pushed": 0}}


def test_admin_api_reviews_releases_and_flags_with_an_audit_record(tmp_path):
    with Rig(quarantine=QuarantineStore(Store.local(tmp_path)), per_minute=100) as rig:
        rig.logic.quarantine.flag_detected({7: EVIDENCE}, datetime.now(UTC))
        listed, release, again, unknown, flag, bad = call(
            rig, ("GET", "/admin/quarantine", key(ADMIN)),
            ("POST", "/admin/quarantine/7/release", {"json": {"reason": "honest"},
                                                     **key(ADMIN)}),
            ("POST", "/admin/quarantine/7/release", {"json": {}, **key(ADMIN)}),
            ("POST", "/admin/quarantine/99/release", {"json": {}, **key(ADMIN)}),
            ("POST", "/admin/quarantine/7", {"json": {"reason": "it came back"},
                                             **key(ADMIN)}),
            ("POST", "/admin/quarantine/8", {"json": {}, **key(ADMIN)}))
        assert listed.status_code == 200 and listed.json()["users"] == [7]
        assert listed.json()["entries"]["7"]["evidence"] == EVIDENCE
        assert release.status_code == 200 and release.json()["status"] == "released"
        assert again.status_code == 404 and "not quarantined" in again.json()["detail"]
        assert unknown.status_code == 404
        assert flag.status_code == 200 and flag.json()["source"] == "operator"
        assert bad.status_code == 422  # a manual flag needs a reason
        assert [(a, who, d["user_id"]) for a, who, d in rig.audits] == [
            ("release", "key:ops", 7), ("quarantine", "key:ops", 7)]
        assert rig.audits[0][2]["evidence"] == EVIDENCE


def test_quarantine_actions_are_not_audited_under_a_running_experiment(tmp_path):
    store = ExperimentStore(Store.local(tmp_path))
    store.start(spec(), "key:ops")
    assert store.record("release", "key:ops", {"user_id": 7}).experiment is None
    assert store.record("promote", "key:ops", {"variant": "A"}).experiment == "exp-1"


def test_cli_lists_releases_and_flags_with_an_audit_record(settings, monkeypatch):
    monkeypatch.setenv("RECO_VAR_DIR", str(settings.var_dir))
    open_quarantine(settings).flag_detected({7: EVIDENCE}, datetime.now(UTC))
    runner = CliRunner()
    listed = runner.invoke(cli, ["quarantine", "list"])
    assert listed.exit_code == 0 and listed.output.startswith("7 quarantined since=")
    assert "why=robust_rdma,robust_count" in listed.output
    out = runner.invoke(cli, ["quarantine", "release", "7", "--reason", "honest"])
    assert out.exit_code == 0 and json.loads(out.output)["status"] == "released"
    refused = runner.invoke(cli, ["quarantine", "release", "7"])
    assert refused.exit_code == 1 and "not quarantined" in refused.output
    out = runner.invoke(cli, ["quarantine", "flag", "7", "--reason", "back at it"])
    assert out.exit_code == 0
    events = open_experiments(settings).events()
    assert [(e.action, e.detail["user_id"]) for e in events] == [("release", 7),
                                                                 ("quarantine", 7)]
    assert all(e.actor.startswith("cli:") for e in events)
    listed = runner.invoke(cli, ["quarantine", "list", "--all"]).output
    assert "source=operator why=back at it" in listed


def test_dashboard_reviews_the_quarantine_newest_first(settings, monkeypatch):
    from dashboard import data

    monkeypatch.setenv("RECO_VAR_DIR", str(settings.var_dir))
    data.settings.clear()
    assert data.quarantine.__wrapped__().empty
    store = open_quarantine(settings)
    store.flag_detected({7: EVIDENCE}, datetime.now(UTC))
    store.flag(9, "key:ops", "reported")
    frame = data.quarantine.__wrapped__()
    assert frame[["user_id", "status", "source", "why"]].values.tolist() == [
        [9, "quarantined", "operator", "reported"],
        [7, "quarantined", "detector", "robust_rdma,robust_count"]]
    data.settings.clear()


def test_the_analytics_cycle_quarantines_the_combined_flag_with_evidence(settings):
    from backend.analytics import cycle
    from tests.unit.test_analytics_snapshot import snapshot

    snap = snapshot()
    section = Spam(raters=2, flagged=SpamFlags(robust_burst=[7], robust_degsim=[7],
                                               combined=[7]), three_sigma_line=None,
                   users=[SpamUser(user_id=7, count=40, rdma=0.1, degsim=0.9, burst=40,
                                   combined=True)])
    snap = snap.model_copy(update={"spam": section})
    assert cycle.quarantine(settings, snap) == [7]
    assert cycle.quarantine(settings, snap) == []  # held already
    entry = open_quarantine(settings).read().entries[7]
    assert entry.evidence["detectors"] == ["robust_degsim", "robust_burst"]
    assert entry.evidence["window_end"] == snap.window.end
