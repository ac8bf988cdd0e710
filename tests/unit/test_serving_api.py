"""The HTTP API over an IngressLogic with fakes, without Ray: the hot path, the routes, the one
error shape, the request metrics and the OpenAPI operations."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import pytest

from backend.serving.api import create_api
from backend.serving.metrics import take_replica_delta
from backend.serving.router import RouterLogic, default_allocation
from tests.unit.test_ingress_logic import ADMIN, CLIENT, Rig


def call(rig: Rig, *requests: tuple[str, str, dict[str, Any]]) -> list[httpx.Response]:
    """Each (method, path, httpx keyword arguments) through the app, in order."""
    app = create_api(lambda: rig.logic)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            out = [await client.request(m, p, **kw) for m, p, kw in requests]
        await rig.logic.close()
        return out

    return asyncio.run(scenario())


def key(k: str) -> dict[str, Any]:
    return {"headers": {"X-API-Key": k}}


def test_hot_path_and_fastapi_route_answer_the_same_plain_text():
    with Rig() as rig:
        hot, routed = call(rig, ("GET", "/recommend/7", {"params": {"k": 3}, **key(CLIENT)}),
                           ("GET", "/recommend/7", {"params": {"k": 3, "x": 1}, **key(CLIENT)}))
        variant = RouterLogic(default_allocation(["A", "B"], 0.5, "exp-1")).assign(7)
        for r in (hot, routed):
            assert r.status_code == 200 and r.text == "700,701,702"
            assert r.headers["content-type"] == "text/plain; charset=utf-8"
        requests = {ls: v for (n, ls), v in take_replica_delta().counters.items()
                    if n == "reco_requests_total"}
        assert requests == {(("route", "/recommend/{user_id}"), ("status", "200"),
                             ("variant", variant)): 2.0}


def test_json_recommendation_body():
    with Rig() as rig:
        rig.logic.titles = {100: "Heat (1995)"}
        r, = call(rig, ("GET", "/recommend", {"params": {"user_id": 1, "k": 2}, **key(CLIENT)}))
        body = r.json()
        assert r.status_code == 200 and list(body) == ["request_id", "user_id", "variant",
                                                       "model_version", "items"]
        assert body["items"] == [{"item_id": 100, "title": "Heat (1995)"},
                                 {"item_id": 101, "title": None}]
        assert (body["user_id"], body["model_version"]) == (1, "v0001")


def test_every_refusal_is_json_detail_with_its_status():
    with Rig() as rig:
        rating = {"user_id": 1, "item_id": 2, "rating": 4}
        out = call(rig,
                   ("GET", "/recommend/0", key(CLIENT)),  # FastAPI's route: out of range
                   ("GET", "/recommend/5", {"params": {"k": 500}, **key(CLIENT)}),
                   ("GET", "/nowhere", {}),
                   ("POST", "/rate", {"json": rating}),
                   ("POST", "/rate", {"json": rating, **key("wrong")}),
                   ("GET", "/models", key(CLIENT)),
                   ("POST", "/admin/diversity", {"json": {}, **key(ADMIN)}),
                   ("POST", "/admin/diversity", {"json": {"bogus": 1}, **key(ADMIN)}),
                   ("POST", "/rate", {"content": json.dumps(rating).encode() + b" " * 20000,
                                      "headers": {"X-API-Key": CLIENT,
                                                  "content-type": "application/json"}}))
        assert [r.status_code for r in out] == [422, 422, 404, 401, 401, 403, 422, 422, 413]
        for r in out:
            assert r.headers["content-type"] == "application/json" and r.json()["detail"]
        assert "admin" in out[5].json()["detail"]
        requests = {dict(ls)["route"] for (n, ls) in take_replica_delta().counters
                    if n == "reco_requests_total"}
        assert "unmatched" in requests and "/rate" in requests


def test_the_key_is_checked_before_the_body_and_the_parameters():
    """A caller without the right key learns nothing of the schema: 401/403, not 422."""
    with Rig() as rig:
        out = call(rig,
                   ("POST", "/admin/diversity", {"json": {}}),
                   ("POST", "/admin/diversity", {"json": {"bogus": 1}, **key(CLIENT)}),
                   ("POST", "/rate", {"json": {"rating": 9}, **key("wrong")}),
                   ("POST", "/admin/quarantine/0", {"json": {}, **key(CLIENT)}),
                   ("GET", "/admin/dlq", {"params": {"topic": 5}}),
                   ("POST", "/admin/diversity", {"json": {}, **key(ADMIN)}),
                   *[("POST", "/admin/diversity", {"content": b"{not json", "headers": {
                       "content-type": "application/json"} | h}) for h in (
                       {}, {"X-API-Key": CLIENT}, {"X-API-Key": ADMIN})],
                   ("POST", "/rate", {"content": b"[1,", "headers": {
                       "content-type": "application/json", "X-API-Key": CLIENT}}))
        assert [r.status_code for r in out] == [401, 403, 401, 403, 401, 422,
                                                401, 403, 400, 400]
        for r in out:
            assert r.json()["detail"]
        assert "not JSON" in out[-1].json()["detail"]


def test_the_rate_limit_refuses_on_the_hot_path_as_on_the_routes():
    with Rig() as rig:  # anonymous: 3 a minute
        out = call(rig, *[("GET", "/recommend/3", {})] * 3,
                   ("GET", "/recommend/3", {}), ("GET", "/recommend", {"params": {"user_id": 3}}))
        assert [r.status_code for r in out] == [200, 200, 200, 429, 429]
        for r in out[3:]:
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["detail"]
            assert r.headers["content-type"] == "application/json"


def test_writes_and_admin_routes():
    with Rig() as rig:
        out = call(rig, ("POST", "/rate", {"json": {"user_id": 1, "item_id": 2, "rating": 4},
                                           **key(CLIENT)}),
                   ("POST", "/watch", {"json": {"user_id": 1, "item_id": 2, "minutes": 10.0},
                                       **key(CLIENT)}),
                   ("POST", "/admin/split", {"json": {"split": 1.0}, **key(ADMIN)}),
                   ("POST", "/admin/diversity", {"json": {"tail_slots": 5}, **key(ADMIN)}),
                   ("GET", "/health", {}),
                   ("GET", "/metrics", {}))
        rate, watch, split, diversity, health, metrics = out
        assert (rate.status_code, watch.status_code) == (202, 202)
        assert rate.json()["status"] == "accepted" and list(rate.json()) == ["event_id",
                                                                            "status"]
        assert [t for t, _ in rig.producer.sent] == ["events.rating", "events.watch"]
        assert split.json() == {"split": 1.0, "salt": "exp-1"}
        assert diversity.content == b'{"tail_slots":5}'
        assert health.json()["split"] == 1.0 and health.json()["status"] == "ok"
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE reco_requests_total counter" in metrics.text


class Gate:
    """Holds every call through `Blocking` until opened (at most `wait` s, then noted)."""

    def __init__(self, wait: float = 5.0) -> None:
        self.entered, self.opened = threading.Event(), threading.Event()
        self.wait, self.timed_out = wait, False


class Blocking:
    """`inner` with each method call held at the gate: a slow store (S3) stand-in."""

    def __init__(self, inner: Any, gate: Gate) -> None:
        self.inner, self.gate = inner, gate

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def held(*args: Any, **kwargs: Any) -> Any:
            self.gate.entered.set()
            if not self.gate.opened.wait(self.gate.wait):
                self.gate.timed_out = True
            return attr(*args, **kwargs)
        return held


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/models", None),
    ("POST", "/admin/promote", {"variant": "C", "version": "v0001"}),
    ("POST", "/admin/rollback", {"variant": "C"}),
    ("GET", "/admin/experiments", None),
    ("GET", "/admin/experiments/e1", None),
    ("GET", "/admin/quarantine", None),
])
def test_an_admin_route_waiting_on_the_store_leaves_the_event_loop_to_others(
        tmp_path, method, path, body):
    """The admin routes' store work (registry, experiments, quarantine: S3 on a cluster)
    runs off the event loop: while it waits, the replica's other requests are answered."""
    from backend.core.settings import Settings
    from backend.core.store import Store
    from backend.ml.recommenders import Popularity
    from registry import open_registry
    from registry.experiments import ExperimentStore
    from registry.quarantine import QuarantineStore
    from tests.unit.test_recommenders import dataset

    registry = open_registry(Settings(var_dir=tmp_path / "var"), signer=True)
    registry.register("C", Popularity().fit(*dataset()), {}, {})
    gate = Gate()
    store = Store.local(tmp_path / "shared")
    with Rig(registry=lambda: Blocking(registry, gate),
             store=Blocking(ExperimentStore(store), gate),
             quarantine=Blocking(QuarantineStore(store), gate)) as rig:
        app = create_api(lambda: rig.logic)

        async def scenario() -> tuple[httpx.Response, httpx.Response]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
                slow = asyncio.create_task(c.request(method, path, json=body, **key(ADMIN)))
                while not gate.entered.is_set():  # the route is at the store
                    await asyncio.sleep(0.01)
                other = await c.get("/health")
                gate.opened.set()
                answer = await slow
            await rig.logic.close()
            return answer, other

        answer, other = asyncio.run(scenario())
    assert not gate.timed_out, "the route held the event loop while it waited on the store"
    assert other.status_code == 200
    assert answer.status_code < 500, answer.text


def test_openapi_lists_every_operation_with_its_models():
    spec = create_api(lambda: None).openapi()  # type: ignore[arg-type, return-value]
    ops = {f"{m.upper()} {p}": o["operationId"] for p, ms in spec["paths"].items()
           for m, o in ms.items()}
    assert ops == {
        "GET /recommend": "recommend_json_recommend_get",
        "GET /recommend/{user_id}": "recommend_plain_recommend__user_id__get",
        "POST /rate": "rate_rate_post", "POST /watch": "watch_watch_post",
        "POST /auth/signin": "sign_in_auth_signin_post",
        "GET /health": "health_health_get", "GET /metrics": "metrics_metrics_get",
        "GET /models": "models_models_get",
        "POST /admin/promote": "admin_promote_admin_promote_post",
        "POST /admin/rollback": "admin_rollback_admin_rollback_post",
        "POST /admin/diversity": "admin_diversity_admin_diversity_post",
        "POST /admin/split": "admin_split_admin_split_post",
        "GET /admin/experiments": "experiments_list_admin_experiments_get",
        "POST /admin/experiments": "experiment_start_admin_experiments_post",
        "GET /admin/experiments/{experiment_id}":
            "experiment_show_admin_experiments__experiment_id__get",
        "POST /admin/experiments/{experiment_id}/weights":
            "experiment_weights_admin_experiments__experiment_id__weights_post",
        "POST /admin/experiments/{experiment_id}/arms":
            "experiment_add_arm_admin_experiments__experiment_id__arms_post",
        "POST /admin/experiments/{experiment_id}/stop":
            "experiment_stop_admin_experiments__experiment_id__stop_post",
        "GET /admin/dlq": "dlq_list_admin_dlq_get",
        "POST /admin/dlq/replay": "dlq_replay_admin_dlq_replay_post",
        "POST /admin/retrain": "retrain_now_admin_retrain_post",
        "GET /admin/quarantine": "quarantine_list_admin_quarantine_get",
        "POST /admin/quarantine/{user_id}/release":
            "quarantine_release_admin_quarantine__user_id__release_post",
        "POST /admin/quarantine/{user_id}": "quarantine_flag_admin_quarantine__user_id__post"}
    stop = spec["paths"]["/admin/experiments/{experiment_id}/stop"]["post"]["responses"]
    assert {"200", "404", "409", "422"} <= set(stop)
    assert stop["404"]["content"] == error_json(spec)
    ok = spec["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/HealthResponse"}
    assert json.dumps(error_json(spec)) == json.dumps(
        {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}})


def error_json(spec: dict[str, Any]) -> Any:
    return spec["paths"]["/rate"]["post"]["responses"]["422"]["content"]
