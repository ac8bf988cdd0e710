"""Experiment records: the audit log as the source of truth, epochs on every allocation
change, refusals with their status, and weighted assignment over N arms."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from scipy import stats
from scipy.stats import binomtest

from backend.core.store import Store
from backend.serving.router import RouterLogic
from backend.serving.schemas import Allocation
from registry.experiments import ArmSpec, ExperimentError, ExperimentSpec, ExperimentStore


def spec(**changes) -> ExperimentSpec:
    base = {"id": "exp-1", "arms": [{"variant": "A"}, {"variant": "B", "version": "v0003"}],
            "control": "A", "salt": "s1", "weights": {"A": 0.5, "B": 0.5},
            "guardrails": [{"metric": "latency_p95_ms", "max": 100}]}
    return ExperimentSpec.model_validate(base | changes)


def test_every_change_is_an_audited_event_and_weights_open_epochs(tmp_path):
    store = ExperimentStore(Store.local(tmp_path))
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
    again = ExperimentStore(Store.local(tmp_path)).get("exp-1")  # state is the fold of the log
    assert again == stopped


@pytest.mark.parametrize(("change", "status", "match"), [
    (lambda s: s.start(spec(), "x"), 409, "exists"),
    (lambda s: s.start(spec(id="exp-2"), "x"), 409, "is running"),
    (lambda s: s.get("nope"), 404, "no experiment"),
    (lambda s: s.set_weights("exp-1", {"A": 1.0}, "x"), 409, "exactly exp-1.s arms"),
    (lambda s: s.set_weights("exp-1", {"A": -1.0, "B": 2.0}, "x"), 422, "non-negative"),
    (lambda s: s.add_arm("exp-1", ArmSpec(variant="B"), 0.2, "x"), 409, "already an arm"),
    (lambda s: s.add_arm("exp-1", ArmSpec(variant="C"), 0.0, "x"), 422, "positive weight"),
])
def test_refusals_carry_their_status_and_change_nothing(tmp_path, change, status, match):
    store = ExperimentStore(Store.local(tmp_path))
    store.start(spec(), "x")
    before = store.events()
    with pytest.raises(ExperimentError, match=match) as err:
        change(store)
    assert err.value.status_code == status and store.events() == before


def test_a_stopped_experiment_takes_no_changes_and_ids_are_not_reused(tmp_path):
    store = ExperimentStore(Store.local(tmp_path))
    store.start(spec(), "x")
    store.stop("exp-1", "x")
    with pytest.raises(ExperimentError, match="has stopped"):
        store.set_weights("exp-1", {"A": 1, "B": 1}, "x")
    with pytest.raises(ExperimentError, match="exists"):
        store.start(spec(), "x")
    with pytest.raises(ExperimentError, match="salt 's1' was experiment 'exp-1'"):
        store.start(spec(id="exp-2"), "x")  # its users' past under that salt carries over
    assert store.start(spec(id="exp-2", salt="s2"), "x").running


def test_malformed_specs_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError):
        spec(arms=[{"variant": "A"}])  # one arm
    with pytest.raises(ValueError):
        spec(weights={"A": 0, "B": 0})
    store = ExperimentStore(Store.local(tmp_path))
    with pytest.raises(ExperimentError, match="control"):
        store.start(spec(control="C"), "x")
    assert store.events() == []


def test_concurrent_changes_all_land_and_an_unreadable_record_is_skipped(tmp_path):
    store = ExperimentStore(Store.local(tmp_path))
    threads = [threading.Thread(target=lambda i=i: [
        store.record("split", f"t{i}", {"n": n}) for n in range(50)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.log.append({"ts": "2026-"})  # a record this version cannot read
    assert Counter(e.actor for e in store.events()) == {f"t{i}": 50 for i in range(4)}
    store.record("split", "after", {"n": 0})  # the next append is not lost with the tear
    assert [e.actor for e in store.events()][-1] == "after"
    assert len(store.events()) == 201


def test_an_event_that_cannot_apply_is_skipped_and_later_changes_still_work(tmp_path):
    store = ExperimentStore(Store.local(tmp_path))
    store.start(spec(), "x")
    store.log.append({  # a malformed detail (written by hand)
        "ts": "2026-12-02T00:00:00Z", "actor": "y", "action": "set_weights",
        "experiment": "exp-1", "detail": {"weights": "lots"}})
    exp = store.set_weights("exp-1", {"A": 0.7, "B": 0.3}, "x")
    assert [e.weights for e in exp.epochs] == [{"A": 0.5, "B": 0.5}, {"A": 0.7, "B": 0.3}]


def test_weighted_assignment_follows_n_weights_and_moves_users_only_to_a_new_arm():
    weights = {"A": 2.0, "B": 1.0, "C": 1.0}
    router = RouterLogic(Allocation(weights=weights, salt="s"))
    got = Counter(router.assign(u) for u in range(40_000))
    expected = [40_000 * w / 4.0 for w in weights.values()]
    assert stats.chisquare([got[n] for n in weights], expected).pvalue > 0.001
    # a fourth arm joins: users only move to it; nobody moves between A, B and C
    before = {u: router.assign(u) for u in range(20_000)}
    router.follow(Allocation(weights=weights | {"D": 4.0}, salt="s"))
    after = {u: router.assign(u) for u in range(20_000)}
    assert all(after[u] in (before[u], "D") for u in before)
    assert binomtest(sum(v == "D" for v in after.values()), 20_000, 0.5).pvalue > 0.001
    # B's weight raised: users only move to B
    router.follow(Allocation(weights={"A": 2.0, "B": 3.0, "C": 1.0, "D": 4.0}, salt="s"))
    raised = {u: router.assign(u) for u in range(20_000)}
    assert all(raised[u] in (after[u], "B") for u in after)
    # arms in another order: the same users on the same arms
    router.follow(Allocation(weights={"D": 4.0, "C": 1.0, "B": 3.0, "A": 2.0}, salt="s"))
    assert {u: router.assign(u) for u in range(20_000)} == raised


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


def test_weights_that_are_not_finite_are_refused_before_anything_is_recorded(tmp_path):
    import pydantic

    from backend.serving.schemas import AddArmRequest, WeightsRequest

    store = ExperimentStore(Store.local(tmp_path))
    for bad in ({"A": float("nan"), "B": 1.0}, {"A": float("inf"), "B": 1.0},
                {"A": 1e308, "B": 1e308}):
        with pytest.raises(pydantic.ValidationError):
            spec(weights=bad)
    store.start(spec(), "x")
    for bad in ({"A": float("nan"), "B": 1.0}, {"A": 1e308, "B": 1e308}):
        with pytest.raises(ExperimentError) as caught:
            store.set_weights("exp-1", bad, "x")
        assert caught.value.status_code == 422
    with pytest.raises(pydantic.ValidationError):
        WeightsRequest.model_validate_json('{"weights": {"A": NaN}}')
    with pytest.raises(pydantic.ValidationError):
        AddArmRequest(arm={"variant": "C"}, weight=float("inf"))
    assert [e.action for e in store.events()] == ["start"]
    # the weights in force again: no event, no epoch (a retry after a failed hand-over)
    assert len(store.set_weights("exp-1", {"A": 0.5, "B": 0.5}, "x").epochs) == 1
    assert [e.action for e in store.events()] == ["start"]
