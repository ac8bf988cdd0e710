"""IngressLogic without Ray: guard, route, coalesce, log, and the shared state it pushes to.

The variants are fakes; the shared state is a real `ServingStateLogic` behind coroutines (as
the ServingState deployment puts it behind a handle); the producer records what it is sent.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest

from backend.core.errors import RecoError
from backend.core.settings import ApiKeySpec, ServeSettings
from backend.core.store import Store
from backend.data.events import MAX_ID, RatingEvent, RecoEvent
from backend.serving.auth import digest
from backend.serving.ingress import IngressLogic, SharedState, VariantCalls
from backend.serving.metrics import MetricsDelta, take_replica_delta
from backend.serving.router import RouterLogic, default_allocation
from backend.serving.schemas import VariantAnswer, VariantStatus
from backend.serving.state import ServingStateLogic
from registry.experiments import ExperimentStore
from registry.quarantine import QuarantineStore

CLIENT, ADMIN = "client-secret", "admin-secret"


class FakeProducer:
    """Records what it is sent; `degraded`, `depth`, `pending` and `spooled` are set by a
    test; `full`: writes are refused as by a full write-ahead log."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.depth = 0
        self.pending = 0
        self.log_bytes = 0
        self.degraded = False
        self.spooled = 0
        self.closed = False
        self.full = False
        self.durable_waits: list[Any] = []

    def send(self, topic: str, event: Any) -> None:
        self.sent.append((topic, event))

    def write(self, topic: str, event: Any) -> Any:
        if self.full:
            from backend.data.wal import WalFull

            raise WalFull("write-ahead log full")
        self.sent.append((topic, event))
        return len(self.sent)

    async def durable(self, entry: Any) -> None:
        self.durable_waits.append(entry)

    def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.sent.append((topic, value))

    def close(self, timeout: float) -> None:
        self.closed = True


class Variant:
    """A variant deployment: answers each (user, k) with k items derived from the user;
    `gate` holds every call until set; `fail` calls raise before answering."""

    def __init__(self, name: str, version: str = "v0001") -> None:
        self.name, self.version = name, version
        self.batches: list[list[tuple[int, int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = 0
        self.refused: dict[str, str] = {}

    async def recommend_batch(self, requests: list[tuple[int, int]]) -> list[VariantAnswer]:
        self.batches.append(list(requests))
        await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise ConnectionError("replica lost")
        # ids as a model's are: within 1..MAX_ID (700, 701, ... for user 7)
        return [VariantAnswer(items=[(u * 100 + i - 1) % MAX_ID + 1 for i in range(k)],
                              variant=self.name,
                              model_version=self.version, model_ms=0.1) for u, k in requests]

    async def status(self) -> VariantStatus:
        return VariantStatus(variant=self.name, version=self.version, refused=self.refused,
                             runtime={})

    def calls(self) -> VariantCalls:
        return VariantCalls(self.recommend_batch, self.status)


def shared(logic: ServingStateLogic, down: list[bool] | None = None) -> SharedState:
    """`logic`'s methods as the ServingState deployment offers them; `down[0]`: every call
    fails (the state replica restarting)."""
    down = down if down is not None else [False]

    def remote(fn: Any) -> Any:
        async def call(*args: Any) -> Any:
            if down[0]:
                raise ConnectionError("state replica away")
            return fn(*args)
        return call

    return SharedState(acquire=remote(logic.acquire), record=remote(logic.record),
                       config=remote(logic.config), deployed=remote(logic.deployed),
                       set_config=remote(logic.set_config),
                       set_allocation=remote(logic.set_allocation),
                       writes_health=remote(logic.writes_health), render=remote(logic.render))


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.fail = fail

    async def __call__(self, batch: list[dict[str, Any]]) -> None:
        if self.fail:
            raise ConnectionError("RecoLog away")
        self.batches.append(list(batch))


def serve_cfg(**changes: Any) -> ServeSettings:
    keys = {"sim": ApiKeySpec(sha256=digest(CLIENT), role="client", per_minute=6000),
            "ops": ApiKeySpec(sha256=digest(ADMIN), role="admin")}
    return ServeSettings(api_keys=keys, per_minute=3, split=0.5, salt="exp-1",
                         log_linger_ms=1000).model_copy(update=changes)


class Rig:
    """One ingress replica's logic over fakes, and the state it shares."""

    def __init__(self, state: ServingStateLogic | None = None, sink: Sink | None = None,
                 variants: str = "AB", store: ExperimentStore | None = None,
                 registry: Any = None, quarantine: QuarantineStore | None = None,
                 sessions: Any = None, dead_letters: Any = None,
                 request_store: Store | None = None, **cfg: Any) -> None:
        self.cfg = serve_cfg(**cfg)
        self.state = state or ServingStateLogic(self.cfg.per_minute, {"key:sim": 6000},
                                                self.cfg.split, self.cfg.salt,
                                                variants=list(variants))
        self.down = [False]
        self.variants = {v: Variant(v) for v in variants}
        self.store = store or ExperimentStore(Store.local(Path(tempfile.mkdtemp(prefix="rig-"))))
        self.sink = sink or Sink()
        self.producer = FakeProducer()
        self.audits: list[tuple[str, str, dict[str, Any]]] = []
        self.logic = IngressLogic(
            self.cfg, {v: x.calls() for v, x in self.variants.items()},
            shared(self.state, self.down), self.sink, self.producer, "replica-1",
            registry=registry or _no_registry, experiments=self.store,
            audit=lambda *event: self.audits.append(event), quarantine=quarantine,
            sessions=sessions, dead_letters=dead_letters, request_store=request_store,
            titles={101: "Heat (1995)"}, retry_on=(ConnectionError,),
            period=3600)

    def __enter__(self) -> Rig:
        take_replica_delta()  # start from an empty delta
        return self

    def __exit__(self, *exc: object) -> None:
        take_replica_delta()


def _no_registry() -> Any:
    raise AssertionError("no registry in this test")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def counters(delta: MetricsDelta) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return dict(delta.counters)


# -- guard --------------------------------------------------------------------------------

@pytest.mark.parametrize(("presented", "length", "needs", "status", "counted"), [
    (CLIENT, 20_000, None, 413, None),
    (None, 0, "client", 401, "401"),
    ("wrong", 0, "client", 401, "401"),
    ("", 0, "admin", 401, "401"),
    (CLIENT, 0, "admin", 403, "403"),
])
def test_guard_refusals_carry_their_http_status(presented, length, needs, status, counted):
    with Rig() as rig:
        async def scenario() -> RecoError:
            with pytest.raises(RecoError) as caught:
                await rig.logic.guard(presented, "10.0.0.1", length, needs)
            await rig.logic.close()
            return caught.value

        exc = run(scenario())
        assert exc.status_code == status and exc.detail and exc.headers == {}
        failures = {ls: v for (n, ls), v in counters(take_replica_delta()).items()
                    if n == "reco_auth_failures_total"}
        assert failures == ({(("status", counted),): 1.0} if counted else {})


def test_guard_admits_by_role_and_returns_the_principal():
    with Rig() as rig:
        async def scenario() -> list[Any]:
            got = [await rig.logic.guard(ADMIN, None, 10, "client"),
                   await rig.logic.guard(ADMIN, None, 10, "admin"),
                   await rig.logic.guard(CLIENT, None, 16 * 1024, "client"),
                   await rig.logic.guard(None, "10.0.0.1", 0, None)]
            await rig.logic.close()
            return got

        admin, admin2, client, anonymous = run(scenario())
        assert admin.name == admin2.name == "ops" and client.name == "sim"
        assert anonymous is None


def test_rate_limit_refuses_with_429_and_retry_after_per_client():
    with Rig() as rig:  # anonymous: 3 a minute, by address; the key its own 6000
        async def scenario() -> tuple[list[int], RecoError]:
            codes = []
            for _ in range(5):
                try:
                    await rig.logic.guard(None, "10.0.0.1", 0, None)
                    codes.append(200)
                except RecoError as exc:
                    codes.append(exc.status_code)
                    last = exc
            await rig.logic.guard(None, "10.0.0.2", 0, None)  # another address is unaffected
            for _ in range(20):
                await rig.logic.guard(CLIENT, "10.0.0.1", 0, None)  # the key's own bucket
            await rig.logic.close()
            return codes, last

        codes, last = run(scenario())
        assert codes == [200, 200, 200, 429, 429]
        assert last.headers["Retry-After"].isdigit() and int(last.headers["Retry-After"]) >= 1
        limited = {ls: v for (n, ls), v in counters(take_replica_delta()).items()
                   if n == "reco_rate_limited_total"}
        assert limited == {(("client", "ip"),): 2.0}


# -- route, coalesce, log -----------------------------------------------------------------

def test_routing_is_sticky_and_follows_the_split():
    with Rig() as rig:
        async def scenario() -> tuple[list[str], list[str]]:
            first, again = [], []
            for user in range(1, 201):
                state: dict[str, Any] = {}
                r = await rig.logic.recommend(state, user, 3)
                assert r["variant"] == state["variant"] and r["user_id"] == user
                assert r["items"] == [user * 100, user * 100 + 1, user * 100 + 2]
                first.append(r["variant"])
            for user in range(1, 201):
                again.append((await rig.logic.recommend({}, user, 3))["variant"])
            await rig.logic.close()
            return first, again

        first, again = run(scenario())
        router = RouterLogic(default_allocation(["A", "B"], 0.5, "exp-1"))
        assert first == again == [router.assign(u) for u in range(1, 201)]
        assert {"A", "B"} == set(first)
        served = [u for batch in rig.variants["A"].batches for u, _ in batch]
        assert sorted(served) == sorted([u for u in range(1, 201) if router.assign(u) == "A"] * 2)


def test_concurrent_requests_coalesce_into_one_variant_call():
    with Rig(split=1.0) as rig:  # everybody on A
        variant = rig.variants["A"]

        async def scenario() -> list[dict[str, Any]]:
            variant.gate.clear()
            first = asyncio.ensure_future(rig.logic.recommend({}, 1, 2))
            await asyncio.sleep(0)
            rest = [asyncio.ensure_future(rig.logic.recommend({}, u, 2)) for u in (2, 3, 4)]
            await asyncio.sleep(0)
            assert variant.batches == [[(1, 2)]]  # the first went at once, alone
            variant.gate.set()
            results = await asyncio.gather(first, *rest)
            await rig.logic.close()
            return results

        results = run(scenario())
        assert variant.batches == [[(1, 2)], [(2, 2), (3, 2), (4, 2)]]  # the rest: one call
        assert [r["items"] for r in results] == [[u * 100, u * 100 + 1] for u in (1, 2, 3, 4)]
        assert len({r["request_id"] for r in results}) == 4


def test_a_variant_call_lost_mid_flight_is_retried_once():
    with Rig(split=1.0) as rig:
        async def scenario() -> tuple[dict[str, Any], Exception]:
            rig.variants["A"].fail = 1
            ok = await rig.logic.recommend({}, 5, 1)
            rig.variants["A"].fail = 2  # lost twice: the request fails
            with pytest.raises(ConnectionError) as caught:
                await rig.logic.recommend({}, 6, 1)
            await rig.logic.close()
            return ok, caught.value

        ok, _ = run(scenario())
        assert ok["items"] == [500]
        assert rig.variants["A"].batches == [[(5, 1)], [(5, 1)], [(6, 1)], [(6, 1)]]


def test_every_recommendation_is_logged_and_shipped_in_batches():
    with Rig() as rig:
        async def scenario() -> list[dict[str, Any]]:
            answers = [await rig.logic.recommend({}, u, 2) for u in (7, 8, 9)]
            await rig.logic.close()  # ships what is queued
            return answers

        answers = run(scenario())
        assert len(rig.sink.batches) == 1 and rig.producer.sent == []
        records = [RecoEvent.model_validate(r) for r in rig.sink.batches[0]]
        assert [(e.request_id, e.user_id, e.variant, e.model_version, e.items)
                for e in records] == [(a["request_id"], a["user_id"], a["variant"],
                                       a["model_version"], a["items"]) for a in answers]
        assert all(e.latency_ms >= 0 for e in records) and rig.producer.closed
        info = {dict(ls)["variant"] for (n, ls) in take_replica_delta().gauges
                if n == "reco_model_info"}
        assert info == {a["variant"] for a in answers}


def test_the_reco_log_falls_back_to_the_replicas_producer_when_shipping_fails():
    with Rig(sink=Sink(fail=True)) as rig:
        async def scenario() -> dict[str, Any]:
            answer = await rig.logic.recommend({}, 11, 1)
            await rig.logic.close()
            return answer

        answer = run(scenario())
        assert rig.sink.batches == []
        [(topic, record)] = rig.producer.sent
        assert topic == "events.reco" and record["request_id"] == answer["request_id"]


def test_titled_answer_serialises_as_the_api_always_answered():
    with Rig() as rig:
        r = {"request_id": "r-1", "user_id": 1, "variant": "A", "model_version": "v0003",
             "items": [101, 102], "model_ms": 0.2}
        body = rig.logic.titled(r).model_dump_json()
        assert body == ('{"request_id":"r-1","user_id":1,"variant":"A","model_version":"v0003",'
                        '"items":[{"item_id":101,"title":"Heat (1995)"},'
                        '{"item_id":102,"title":null}]}')


# -- the shared state ---------------------------------------------------------------------

def test_a_split_change_on_one_replica_reaches_the_other_through_the_shared_state():
    one = Rig()
    two = Rig(state=one.state)

    async def scenario() -> tuple[str, list[str]]:
        await one.logic.reconfigure({"split": 0.5, "salt": "exp-1"})
        await two.logic.reconfigure({"split": 0.5, "salt": "exp-1"})
        changed = await one.logic.set_split(0.0, None, "key:ops")
        before = two.logic.router.allocation.split
        await two.logic.push()  # its next push period
        variants = [(await two.logic.recommend({}, u, 1))["variant"] for u in range(1, 30)]
        for rig in (one, two):
            await rig.logic.close()
        return f"{changed.split}/{changed.salt}/{before}", variants

    with one, two:
        changed, variants = run(scenario())
    assert changed == "0.0/exp-1/0.5" and set(variants) == {"B"}
    assert one.audits == [("split", "key:ops", {"split": 0.0, "salt": "exp-1"})]
    assert two.audits == []


def test_a_replica_that_has_not_served_follows_a_split_change_from_its_own_push_loop():
    one = Rig()
    two = Rig(state=one.state)
    two.logic.period = 0.01

    async def scenario() -> tuple[float, float]:
        await two.logic.reconfigure({"split": 0.5, "salt": "exp-1"})  # deployed, no request yet
        await one.logic.set_split(0.0, None, "key:ops")
        before = two.logic.router.allocation.split
        for _ in range(200):
            await asyncio.sleep(0.01)
            if two.logic.router.allocation.split != before:
                break
        after = two.logic.router.allocation.split
        for rig in (one, two):
            await rig.logic.close()
        return before, after

    with one, two:
        assert run(scenario()) == (0.5, 0.0)


def test_a_replica_restarting_with_the_deployed_config_does_not_undo_an_admin_change():
    with Rig() as rig:
        async def scenario() -> float:
            await rig.logic.reconfigure({"split": 0.5})
            await rig.logic.set_split(0.9, None, "key:ops")
            again = Rig(state=rig.state)  # a replica (re)starting with the same user_config
            await again.logic.reconfigure({"split": 0.5})
            await rig.logic.close()
            await again.logic.close()
            return again.logic.router.allocation.split

        assert run(scenario()) == 0.9


def test_push_sends_the_delta_with_producer_gauges_and_survives_a_missing_state():
    with Rig() as rig:
        async def scenario() -> str:
            await rig.logic.recommend({}, 3, 1)
            rig.producer.depth, rig.producer.spooled, rig.producer.pending = 4, 2, 3
            await rig.logic.push()
            rig.down[0] = True
            with pytest.raises(ConnectionError):  # the loop logs it and tries next period
                await rig.logic.push()
            rig.down[0] = False
            await rig.logic.close()
            return rig.state.render()

        text = run(scenario())
        assert 'reco_spool_depth{replica="replica-1"} 4.0' in text
        assert 'reco_wal_pending{replica="replica-1"} 3.0' in text
        assert "reco_kafka_produce_errors_total 2.0" in text
        assert "reco_model_info{" in text


def test_health_says_degraded_when_any_replica_spools_and_answers_without_the_state():
    with Rig() as rig:
        async def scenario() -> list[dict[str, Any]]:
            out = [(await rig.logic.health()).model_dump()]
            delta = MetricsDelta()  # another replica spools
            delta.set("reco_spool_depth", {"replica": "replica-2"}, 7)
            delta.set("reco_broker_degraded", {"replica": "replica-2"}, 1)
            rig.state.record(delta.as_payload())
            out.append((await rig.logic.health()).model_dump())
            rig.down[0] = True
            rig.producer.depth = 2
            out.append((await rig.logic.health()).model_dump())
            rig.down[0] = False
            await rig.logic.close()
            return out

        ok, others, alone = run(scenario())
        assert ok == {"status": "ok", "variants": {
            v: {"variant": v, "version": "v0001", "refused": {}, "runtime": {}}
            for v in ("A", "B")}, "broker_degraded": False, "spool_depth": 0, "wal_pending": 0,
            "split": 0.5,
            "salt": "exp-1", "weights": {"A": 0.5, "B": 0.5}, "experiment": None, "epoch": None}
        assert (others["status"], others["broker_degraded"], others["spool_depth"]) == (
            "degraded", True, 7)
        assert (alone["status"], alone["spool_depth"]) == ("degraded", 2)


def test_metrics_text_adds_each_variants_refused_versions():
    from prometheus_client.parser import text_string_to_metric_families

    with Rig() as rig:
        rig.variants["A"].refused = {"v0002": "bad signature", "v0003": "extra file"}

        async def scenario() -> str:
            text = await rig.logic.metrics_text()
            await rig.logic.close()
            return text

        samples = {(s.name, tuple(s.labels.items())): s.value
                   for fam in text_string_to_metric_families(run(scenario()))
                   for s in fam.samples}
        assert samples[("reco_model_refused", (("variant", "A"),))] == 2
        assert samples[("reco_model_refused", (("variant", "B"),))] == 0


def test_diversity_needs_a_knob_and_keeps_each_knobs_json_type():
    with Rig() as rig:
        async def scenario() -> tuple[RecoError, str]:
            with pytest.raises(RecoError) as caught:
                await rig.logic.set_diversity({}, "key:ops")
            knobs = await rig.logic.set_diversity({"tail_slots": 5, "mmr_lambda": 0.5},
                                                  "key:ops")
            await rig.logic.close()
            return caught.value, knobs.model_dump_json()

        refused, knobs = run(scenario())
        assert refused.status_code == 422
        assert knobs == '{"tail_slots":5,"mmr_lambda":0.5}'
        assert rig.state.config().b_runtime == {"tail_slots": 5, "mmr_lambda": 0.5}
        assert rig.audits == [("diversity", "key:ops",  # the refused call left no record
                               {"knobs": {"tail_slots": 5, "mmr_lambda": 0.5}})]


def test_writes_are_acknowledged_once_durable_and_refused_when_the_log_is_full():
    with Rig() as rig:
        event = RatingEvent(user_id=1, item_id=2, rating=4)
        accepted = run(rig.logic.accept("events.rating", event))
        assert accepted.model_dump() == {"event_id": event.event_id, "status": "accepted"}
        assert rig.producer.sent == [("events.rating", event)]
        assert rig.producer.durable_waits == [1]  # awaited its fsync before answering
        rig.producer.full = True
        with pytest.raises(RecoError) as refused:
            run(rig.logic.accept("events.rating", RatingEvent(user_id=1, item_id=2, rating=4)))
        assert refused.value.status_code == 503 and "Retry-After" in refused.value.headers


def test_registry_operations_answer_with_the_variants_aliases(tmp_path):
    from backend.core.settings import Settings
    from backend.ml.recommenders import Popularity
    from registry import open_registry
    from tests.unit.test_recommenders import dataset

    registry = open_registry(Settings(var_dir=tmp_path / "var"), signer=True)
    model = Popularity().fit(*dataset())
    v1 = registry.register("A", model, {}, {})
    registry.promote("A", v1)
    v2 = registry.register("A", model, {}, {})
    with Rig() as rig:
        rig.logic.registry = lambda: registry
        promoted = rig.logic.promote("A", v2, "key:ops").model_dump()
        assert promoted["production"] == v2 and promoted["previous"] == v1
        assert rig.logic.models().model_dump() == {
            "A": {"aliases": registry.aliases("A").named(), "versions": [v1, v2]}}
        assert rig.logic.rollback("A", "key:ops").model_dump()["production"] == v1
        with pytest.raises(RecoError) as caught:
            rig.logic.promote("A", "v0099", "key:ops")
        assert caught.value.status_code == 409
        assert rig.audits == [("promote", "key:ops", {"variant": "A", "version": v2}),
                              ("rollback", "key:ops", {"variant": "A", "version": v1})]


def test_an_action_that_took_effect_is_not_reported_failed_when_its_audit_write_fails():
    with Rig() as rig:
        def broken(*event: object) -> None:
            raise OSError("disk full")

        rig.logic.audit = broken

        async def scenario() -> float:
            changed = await rig.logic.set_split(0.8, None, "key:ops")
            await rig.logic.close()
            return changed.split

        assert run(scenario()) == 0.8 and rig.state.config().allocation.split == 0.8
        delta = take_replica_delta()
        assert delta.counters[("reco_audit_failures_total", ())] == 1


def test_a_late_redeploy_of_the_same_config_keeps_the_admin_change_on_this_replica():
    with Rig() as rig:
        async def scenario() -> float:
            await rig.logic.reconfigure({"split": 0.5})
            await rig.logic.set_split(0.9, None, "key:ops")
            await rig.logic.reconfigure({"split": 0.5})  # Serve re-sends the user_config
            await rig.logic.close()
            return rig.logic.router.allocation.split

        assert run(scenario()) == 0.9


def test_an_experiment_started_reweighted_grown_and_stopped_reaches_every_replica(tmp_path):
    from backend.core.settings import Settings
    from backend.ml.recommenders import Popularity
    from registry import open_registry
    from registry.experiments import ArmSpec, ExperimentSpec
    from tests.unit.test_recommenders import dataset

    registry = open_registry(Settings(var_dir=tmp_path / "var"), signer=True)
    model = Popularity().fit(*dataset())
    v1 = registry.register("C", model, {}, {})
    registry.promote("C", v1)
    store = ExperimentStore(Store.local(tmp_path / "registry"))
    state = ServingStateLogic(100, {"key:sim": 6000}, 0.5, "exp-1", variants=list("ABC"))
    one = Rig(state=state, variants="ABC", store=store, registry=lambda: registry)
    two = Rig(state=state, variants="ABC", store=store, registry=lambda: registry)
    spec = ExperimentSpec(id="e1", arms=[ArmSpec(variant="A"), ArmSpec(variant="B")],
                          control="A", salt="e1-salt", weights={"A": 1, "B": 1})

    async def refused(call: Any) -> int:
        with pytest.raises(RecoError) as caught:
            await call
        return caught.value.status_code

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        ghost = spec.model_copy(update={"id": "e0", "arms": [ArmSpec(variant="A"),
                                                             ArmSpec(variant="D")],
                                        "weights": {"A": 1, "D": 1}})
        out["undeployed"] = await refused(one.logic.start_experiment(ghost, "key:ops"))
        out["started"] = await one.logic.start_experiment(spec, "key:ops")
        await two.logic.push()  # the other replica's next push period
        out["two_after_start"] = two.logic.router.allocation
        out["split_refused"] = await refused(two.logic.set_split(0.9, None, "key:ops"))
        await two.logic.set_weights("e1", {"A": 1, "B": 3}, "key:ops")
        await one.logic.push()
        out["one_after_weights"] = one.logic.router.allocation
        pinned = ArmSpec(variant="C", version="v0099")
        out["pin_refused"] = await refused(one.logic.add_arm("e1", pinned, 1.0, "key:ops"))
        await one.logic.add_arm("e1", ArmSpec(variant="C", version=v1), 1.0, "key:ops")
        await two.logic.push()
        out["three"] = [await two.logic.recommend({}, u, 1) for u in range(1, 301)]
        with pytest.raises(RecoError) as caught:  # C is pinned at v1 while e1 runs
            one.logic.rollback("C", "key:ops")
        out["rollback_refused"] = caught.value.status_code
        out["stopped"] = await two.logic.stop_experiment("e1", "key:ops")
        await one.logic.push()
        out["one_after_stop"] = one.logic.router.allocation
        for rig in (one, two):
            await rig.logic.close()
        return out

    with one, two:
        out = run(scenario())
    assert out["undeployed"] == 409 and out["split_refused"] == 409
    assert out["pin_refused"] == 409 and out["rollback_refused"] == 409
    assert out["started"].experiment.epoch.weights == {"A": 1, "B": 1}
    assert out["two_after_start"].experiment == "e1" and out["two_after_start"].epoch == 0
    assert out["one_after_weights"].weights == {"A": 1, "B": 3}
    assert out["one_after_weights"].epoch == 1
    assert {a["variant"] for a in out["three"]} == {"A", "B", "C"}
    records = [RecoEvent.model_validate(r) for b in two.sink.batches for r in b]
    assert {(r.experiment, r.epoch) for r in records} == {("e1", 2)}
    assert out["one_after_stop"] == default_allocation(["A", "B", "C"], 0.5, "exp-1")
    trail = [(e.action, e.actor) for e in out["stopped"].events]
    assert trail == [("start", "key:ops"), ("set_weights", "key:ops"), ("add_arm", "key:ops"),
                     ("stop", "key:ops")]


def test_an_allocation_naming_an_undeployed_variant_falls_back_to_the_default_split():
    from backend.serving.schemas import Allocation

    state = ServingStateLogic(100, {"key:sim": 6000}, 0.5, "exp-1", variants=list("AB"),
                              running=Allocation(weights={"A": 1, "C": 1}, salt="x",
                                                 experiment="e1", epoch=0))
    with Rig(state=state) as rig:  # this replica has A and B only
        async def scenario() -> set[str]:
            await rig.logic.push()
            served = {(await rig.logic.recommend({}, u, 1))["variant"] for u in range(1, 60)}
            await rig.logic.close()
            return served

        assert run(scenario()) == {"A", "B"}
        records = [RecoEvent.model_validate(r) for b in rig.sink.batches for r in b]
        assert {r.experiment for r in records} == {None}


def test_a_stop_the_serving_state_missed_is_repaired_by_repeating_it(tmp_path):
    from registry.experiments import ArmSpec, ExperimentSpec

    with Rig(store=ExperimentStore(Store.local(tmp_path))) as rig:
        spec = ExperimentSpec(id="e1", arms=[ArmSpec(variant="A"), ArmSpec(variant="B")],
                              control="A", salt="e1", weights={"A": 1, "B": 1})

        async def scenario() -> tuple[int, int, str | None, str | None]:
            await rig.logic.start_experiment(spec, "key:ops")
            rig.down[0] = True  # the state replica away: recorded, not handed over
            with pytest.raises(RecoError) as first:
                await rig.logic.stop_experiment("e1", "key:ops")
            rig.down[0] = False
            missed = rig.state.config().allocation.experiment
            with pytest.raises(RecoError) as again:  # stopped already: 409, and repaired
                await rig.logic.stop_experiment("e1", "key:ops")
            await rig.logic.close()
            return (first.value.status_code, again.value.status_code, missed,
                    rig.state.config().allocation.experiment)

        assert run(scenario()) == (503, 409, "e1", None)
        assert rig.logic.router.allocation.experiment is None


def test_an_experiment_may_not_reuse_the_default_splits_salt():
    from registry.experiments import ArmSpec, ExperimentSpec

    with Rig() as rig:
        spec = ExperimentSpec(id="e1", arms=[ArmSpec(variant="A"), ArmSpec(variant="B")],
                              control="A", salt="exp-1", weights={"A": 1, "B": 1})
        with pytest.raises(RecoError) as caught:
            run(rig.logic.start_experiment(spec, "key:ops"))
        assert caught.value.status_code == 409 and rig.store.events() == []
