"""Dead-letter review and replay, and "retrain now": the shared logic, the admin API and
the CLI, each audited."""

from __future__ import annotations

from click.testing import CliRunner

from backend.core.requests import pending_retrain
from backend.core.store import Store
from backend.data.deadletters import DeadLetters
from backend.data.lake import Lake
from backend.ops.cli import main as cli
from registry import open_experiments
from tests.conftest import free_port
from tests.unit.test_dashboard import lake_fixture
from tests.unit.test_ingress_logic import ADMIN, CLIENT, Rig
from tests.unit.test_serving_api import call, key


def test_dead_letters_are_counted_by_reason_and_filtered(tmp_path):
    lake_fixture(tmp_path)
    letters = DeadLetters(Lake(tmp_path))
    counts = letters.counts()
    assert (counts.total, counts.replayable) == (3, 3)
    assert [(r.reason, r.count) for r in counts.reasons] == [
        ("malformed JSON: x", 1), ("malformed JSON: y", 1), ("oversized: 20000", 1)]
    assert letters.counts(contains="malformed").total == 2
    assert letters.counts(topic="events.watch").total == 0


def test_a_replay_sends_each_raw_message_to_its_source_topic(tmp_path):
    lake_fixture(tmp_path)
    sent: list[tuple[str, bytes, bytes | None]] = []
    n = DeadLetters(Lake(tmp_path)).replay(lambda t, v, k: sent.append((t, v, k)),
                                     contains="malformed")
    assert n == 2 and sent == [("events.rating", b"{", None)] * 2


def test_admin_api_lists_and_replays_dead_letters_audited(tmp_path):
    lake_fixture(tmp_path)
    with Rig(dead_letters=DeadLetters(Lake(tmp_path)), per_minute=100) as rig:
        listed, filtered, replay, viewer, bad = call(
            rig, ("GET", "/admin/dlq", key(ADMIN)),
            ("GET", "/admin/dlq", {"params": {"contains": "oversized"}, **key(ADMIN)}),
            ("POST", "/admin/dlq/replay", {"json": {"contains": "malformed"}, **key(ADMIN)}),
            ("POST", "/admin/dlq/replay", {"json": {}, **key(CLIENT)}),
            ("POST", "/admin/dlq/replay", {"json": {"topic": "events.dlq"}, **key(ADMIN)}))
        assert listed.status_code == 200 and listed.json()["total"] == 3
        assert filtered.json()["total"] == 1
        assert replay.status_code == 200 and replay.json() == {"replayed": 2}
        assert [t for t, _ in rig.producer.sent] == ["events.rating"] * 2
        assert viewer.status_code == 403 and bad.status_code == 422  # the DLQ is no source
        assert rig.audits == [("dlq_replay", "key:ops",
                               {"topic": None, "contains": "malformed", "replayed": 2})]


def test_admin_api_leaves_a_retrain_request_for_the_scheduler_audited(tmp_path):
    path = Store.local(tmp_path)
    with Rig(request_store=path, per_minute=100) as rig:
        asked, refused = call(
            rig, ("POST", "/admin/retrain", {"json": {"reason": "new films"}, **key(ADMIN)}),
            ("POST", "/admin/retrain", {"json": {}, **key(CLIENT)}))
    assert asked.status_code == 202 and asked.json()["actor"] == "key:ops"
    assert refused.status_code == 403
    request = pending_retrain(path)
    assert request is not None and request.actor == "key:ops"
    assert rig.audits == [("retrain", "key:ops", {"reason": "new films"})]


def test_a_replica_without_the_lake_answers_503_not_500():
    with Rig(per_minute=100) as rig:
        dlq, retrain = call(rig, ("GET", "/admin/dlq", key(ADMIN)),
                            ("POST", "/admin/retrain", {"json": {}, **key(ADMIN)}))
    assert dlq.status_code == 503 and "dead letters" in dlq.json()["detail"]
    assert retrain.status_code == 503


def test_cli_replays_only_with_yes_and_audits(settings, monkeypatch):
    monkeypatch.setenv("RECO_VAR_DIR", str(settings.var_dir))
    lake_fixture(settings.var_dir / "lake")
    runner = CliRunner()
    listed = runner.invoke(cli, ["dlq", "list"])
    assert listed.exit_code == 0 and listed.output.splitlines()[-1].split() == ["3", "total"]
    dry = runner.invoke(cli, ["dlq", "replay", "--contains", "oversized"])
    assert dry.exit_code == 0 and "would replay 1 dead letters" in dry.output
    assert open_experiments(settings).events() == []
    monkeypatch.setenv("RECO_KAFKA__BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("RECO_KAFKA__BOOTSTRAP_TIMEOUT_MS", "500")  # no broker: spooled
    done = runner.invoke(cli, ["dlq", "replay", "--contains", "oversized", "--yes"])
    assert done.exit_code == 0, done.output
    assert "replayed 1 dead letters" in done.output
    (event,) = open_experiments(settings).events()
    assert event.action == "dlq_replay" and event.actor.startswith("cli:")
    assert event.detail == {"topic": None, "contains": "oversized", "replayed": 1}
