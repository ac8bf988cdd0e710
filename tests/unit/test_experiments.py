"""Experiment records: the audit log as the source of truth, epochs on every allocation
change, refusals with their status, and weighted assignment over N arms."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from scipy import stats

from backend.serving.router import BUCKETS, RouterLogic, default_allocation, weighted_arm
from registry.experiments import ArmSpec, ExperimentError, ExperimentSpec, ExperimentStore


def spec(**changes) -> ExperimentSpec:
    base = {"id": "exp-1", "arms": [{"variant": "A"}, {"variant": "B", "version": "v0003"}],
            "control": "A", "salt": "s1", "weights": {"A": 0.5, "B": 0.5},
            "guardrails": [{"metric": "latency_p95_ms", "max": 100}]}
    return ExperimentSpec.model_validate(base | changes)


def test_every_change_is_an_audited_event_and_weights_open_epochs(tmp_path):
    store = ExperimentStore(tmp_path)
    store.start(spec(), actor="key:ops")
    store.set_weights("exp-1", {"A": 0.8, "B": 0.2}, actor="key:ops")
    exp = store.add_arm("exp-1", ArmSpec(variant="C"), 0.1, actor="alice")
    assert [a.variant for a in exp.spec.arms] == ["A", "B", "C"]
    assert [e.weights for e in exp.epochs] == [{"A": 0.5, "B": 0.5}, {"A": 0.8, "B": 0.2},
                                              {"A": 0.8, "B": 0.2, "C": 0.1}]
    assert exp.weights_at(exp.epochs[1].start).number == 1
    store.record("promote", "key:ops", {"variant": "B", "version": "v0004"})
    stopped = store.stop("exp-1", actor="alice")
    assert not stopped.running and store.running() is None
    trail = store.events("exp-1")
    assert [(e.action, e.actor) for e in trail] == [
        ("start", "key:ops"), ("set_weights", "key:ops"), ("add_arm", "alice"),
        ("promote", "key:ops"), ("stop", "alice")]
    assert all(a.ts <= b.ts for a, b in zip(trail, trail[1:], strict=False))
    again = ExperimentStore(tmp_path).get("exp-1")  # state is the fold of the log
    assert again == stopped


@pytest.mark.parametrize(("change", "status", "match"), [
    (lambda s: s.start(spec(), "x"), 409, "exists"),
    (lambda s: s.start(spec(id="exp-2"), "x"), 409, "is running"),
    (lambda s: s.get("nope"), 404, "no experiment"),
    (lambda s: s.set_weights("exp-1", {"A": 1.0}, "x"), 422, "exactly the arms"),
    (lambda s: s.set_weights("exp-1", {"A": -1.0, "B": 2.0}, "x"), 422, "non-negative"),
    (lambda s: s.add_arm("exp-1", ArmSpec(variant="B"), 0.2, "x"), 409, "already an arm"),
    (lambda s: s.add_arm("exp-1", ArmSpec(variant="C"), 0.0, "x"), 422, "positive weight"),
])
def test_refusals_carry_their_status_and_change_nothing(tmp_path, change, status, match):
    store = ExperimentStore(tmp_path)
    store.start(spec(), "x")
    before = store.events()
    with pytest.raises(ExperimentError, match=match) as err:
        change(store)
    assert err.value.status_code == status and store.events() == before


def test_a_stopped_experiment_takes_no_changes_and_ids_are_not_reused(tmp_path):
    store = ExperimentStore(tmp_path)
    store.start(spec(), "x")
    store.stop("exp-1", "x")
    with pytest.raises(ExperimentError, match="has stopped"):
        store.set_weights("exp-1", {"A": 1, "B": 1}, "x")
    with pytest.raises(ExperimentError, match="exists"):
        store.start(spec(), "x")
    assert store.start(spec(id="exp-2"), "x").running


def test_malformed_specs_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError):
        spec(arms=[{"variant": "A"}])  # one arm
    with pytest.raises(ValueError):
        spec(weights={"A": 0, "B": 0})
    store = ExperimentStore(tmp_path)
    with pytest.raises(ExperimentError, match="control"):
        store.start(spec(control="C"), "x")
    assert store.events() == []


def test_concurrent_appends_interleave_whole_lines_and_a_torn_line_is_skipped(tmp_path):
    store = ExperimentStore(tmp_path)
    threads = [threading.Thread(target=lambda i=i: [
        store.record("split", f"t{i}", {"n": n}) for n in range(50)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(store.log, "a") as fh:
        fh.write('{"ts": "2026-')  # a crash mid-append
    assert Counter(e.actor for e in store.events()) == {f"t{i}": 50 for i in range(4)}
    store.record("split", "after", {"n": 0})  # the next append is not lost with the tear
    assert [e.actor for e in store.events()][-1] == "after"
    assert len(store.events()) == 201


def test_an_event_that_cannot_apply_is_skipped_and_later_changes_still_work(tmp_path):
    store = ExperimentStore(tmp_path)
    store.start(spec(), "x")
    with open(store.log, "a") as fh:  # valid JSON, a malformed detail (written by hand)
        fh.write('{"ts": "2026-12-02T00:00:00Z", "actor": "y", "action": "set_weights", '
                 '"experiment": "exp-1", "detail": {"weights": "lots"}}\n')
    exp = store.set_weights("exp-1", {"A": 0.7, "B": 0.3}, "x")
    assert [e.weights for e in exp.epochs] == [{"A": 0.5, "B": 0.5}, {"A": 0.7, "B": 0.3}]


def test_weighted_assignment_keeps_the_two_arm_routers_users_and_follows_n_weights():
    router = RouterLogic(default_allocation(["A", "B"], 0.3, "s"))
    for user in range(2000):  # the two-arm router's rule: users keep their arm on upgrade
        assert router.assign(user) == ("A" if router.bucket(user) < 3000 else "B")
    weights = [("A", 2.0), ("B", 1.0), ("C", 1.0)]
    got = Counter(weighted_arm(router.bucket(u), weights) for u in range(40_000))
    expected = [40_000 * w / 4.0 for _, w in weights]
    assert stats.chisquare([got[n] for n, _ in weights], expected).pvalue > 0.001
    assert weighted_arm(BUCKETS - 1, weights) == "C" and weighted_arm(0, weights) == "A"


def test_promotions_and_rollbacks_from_the_cli_are_audited_with_the_os_account(tmp_path):
    import os
    import pwd

    from click.testing import CliRunner

    from backend.core.settings import Settings
    from backend.ml.recommenders import Popularity
    from backend.ops.cli import main
    from registry import open_experiments, open_registry
    from tests.unit.test_recommenders import dataset

    settings = Settings(var_dir=tmp_path / "var")
    registry = open_registry(settings, signer=True)
    model = Popularity().fit(*dataset())
    v1, v2 = (registry.register("A", model, {}, {}) for _ in range(2))
    registry.promote("A", v1)
    env = {"RECO_VAR_DIR": str(settings.var_dir)}
    runner = CliRunner()
    for args in (["models", "promote", "A", v2], ["models", "rollback", "A"],
                 ["models", "promote", "A", "v0099"]):  # the last is refused: no record
        runner.invoke(main, args, env=env | {"USER": "someone-else", "LOGNAME": "x"})
    trail = open_experiments(settings).events()
    assert [(e.action, e.actor, e.detail) for e in trail] == [
        ("promote", f"cli:{pwd.getpwuid(os.geteuid()).pw_name}", {"variant": "A", "version": v2}),
        ("rollback", f"cli:{pwd.getpwuid(os.geteuid()).pw_name}", {"variant": "A", "version": v1})]


def test_the_audit_log_beside_the_variants_is_not_a_variant(tmp_path):
    from backend.core.settings import Settings
    from backend.ml.recommenders import Popularity
    from registry import open_experiments, open_registry
    from tests.unit.test_recommenders import dataset

    settings = Settings(var_dir=tmp_path / "var")
    registry = open_registry(settings, signer=True)
    registry.register("A", Popularity().fit(*dataset()), {}, {})
    open_experiments(settings).record("split", "key:ops", {"split": 0.5})
    assert registry.variants() == ["A"]
