"""The API takes what its OpenAPI schema allows and refuses what it rules out: JSON Schema's
integers (3.0 is one, `true` is not), no boolean or string for a number, every bound and
pattern stated, an empty change refused by `minProperties`, the error statuses and
Retry-After documented, and a 405 that names every method of the path. The deployed app is
held to the same by schemathesis in the integration tests."""

from __future__ import annotations

import pytest

from backend.serving.api import create_api
from tests.unit.test_ingress_logic import ADMIN, CLIENT, Rig
from tests.unit.test_serving_api import call, key

SPEC = create_api(lambda: None).openapi()  # type: ignore[arg-type, return-value]
RATING = {"user_id": 1, "item_id": 2, "rating": 4}
WATCH = {"user_id": 1, "item_id": 2, "minutes": 10.0}


def schema(name: str) -> dict:
    return SPEC["components"]["schemas"][name]


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/rate", RATING | {"rating": 3.0}, 202),  # a whole JSON number is an integer
    ("/watch", WATCH | {"user_id": 1033.0}, 202),
    ("/watch", WATCH | {"minutes": 10}, 202),  # an integer is a number
    ("/rate", RATING | {"rating": 3.5}, 422),
    ("/rate", RATING | {"rating": True}, 422),
    ("/rate", RATING | {"rating": "4"}, 422),
    ("/watch", WATCH | {"minutes": False}, 422),
    # the stated pattern: RFC 3339 with an offset, from 1990 ...
    ("/rate", RATING | {"ts": "1989-12-31T23:59:59Z"}, 422),
    ("/rate", RATING | {"ts": "2024-05-01T10:00:00"}, 422),
    # ... and an instant the schema cannot rule out (the ingest dead-letters it, with why)
    ("/rate", RATING | {"ts": "2999-01-01T00:00:00Z"}, 202),
])
def test_writes_take_json_schemas_numbers_and_stated_patterns(path, body, status):
    with Rig() as rig:
        (r,) = call(rig, ("POST", path, {"json": body, **key(CLIENT)}))
        assert r.status_code == status, r.text
        if status == 202:
            ((_, sent),) = rig.producer.sent
            assert type(sent.user_id) is int and sent.user_id == int(body["user_id"])


@pytest.mark.parametrize(("path", "body", "why"), [
    ("/admin/split", {"split": False, "salt": "0"}, "split"),
    ("/admin/split", {"split": "0.5"}, "split"),
    ("/admin/split", {}, "give at least one of split, salt"),
    ("/admin/split", {"split": None}, "split may not be null"),
    ("/admin/diversity", {"tail_slots": False}, "tail_slots"),
    ("/admin/diversity", {"tail_slots": 2.5}, "tail_slots"),
    ("/admin/diversity", {}, "give at least one of mmr_lambda, exploration, tail_slots"),
    ("/admin/experiments/e1/weights", {"weights": {"A": 0, "B": 0}}, "positive sum"),
    ("/admin/experiments/e1/weights", {"weights": {"A": True}}, "weights"),
    ("/admin/experiments/e1/weights", {"weights": {"A b": 1.0}}, "weight names must match"),
])
def test_admin_changes_refuse_what_the_schema_rules_out_and_change_nothing(path, body, why):
    with Rig() as rig:
        before = rig.state.config()
        (r,) = call(rig, ("POST", path, {"json": body, **key(ADMIN)}))
        assert r.status_code == 422 and why in str(r.json()["detail"]), r.text
        assert rig.audits == [] and rig.state.config() == before


def test_the_schema_states_the_rules_it_enforces():
    split, diversity = schema("SplitRequest"), schema("DiversityRequest")
    for body in (split, diversity):
        assert body["minProperties"] == 1 and body["additionalProperties"] is False
        assert all("anyOf" not in p and p.get("type") != "null"  # null is refused: not stated
                   for p in body["properties"].values())
    assert split["properties"]["split"] == {"type": "number", "minimum": 0, "maximum": 1,
                                            "title": "Split"}
    assert diversity["properties"]["tail_slots"]["type"] == "integer"
    weights = schema("WeightsRequest")["properties"]["weights"]
    assert weights["minProperties"] == 1 and weights["propertyNames"] == {
        "pattern": r"^[A-Za-z0-9_-]{1,32}$"}
    assert weights["not"] == {"additionalProperties": {"maximum": 0}}  # not all zero
    plain = SPEC["paths"]["/recommend/{user_id}"]["get"]["parameters"][0]["schema"]
    assert (plain["minimum"], plain["maximum"]) == (1, 10_000_000)


def test_every_operation_documents_the_one_error_shape_and_retry_after():
    for path, methods in SPEC["paths"].items():
        for method, op in methods.items():
            for status in ("400", "401", "403", "404", "413", "422", "429"):
                content = op["responses"][status]["content"]
                assert content == {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorBody"}}}, (path, status)
            assert "Retry-After" in op["responses"]["429"]["headers"], (method, path)


def test_a_wrong_method_names_every_method_of_the_path():
    with Rig() as rig:
        options, put = call(rig, ("OPTIONS", "/admin/experiments", key(ADMIN)),
                            ("PUT", "/admin/experiments", key(ADMIN)))
        for r in (options, put):
            assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
            assert r.json() == {"detail": "Method Not Allowed"}


def test_a_body_that_is_not_json_is_a_documented_400():
    with Rig() as rig:
        (r,) = call(rig, ("POST", "/admin/split", {"content": b"\xff\xfe{",
                                                   "headers": {"X-API-Key": ADMIN,
                                                               "content-type":
                                                                   "application/json"}}))
        assert r.status_code in (400, 422) and r.json()["detail"]


def test_the_two_credentials_are_declared_where_the_guard_asks_for_them():
    """An API key or a console session on every guarded operation (either will do), optional
    where anyone may call (rate-limited by address), none on health and metrics."""
    schemes = SPEC["components"]["securitySchemes"]
    assert schemes["ApiKey"] | {"description": ""} == {"type": "apiKey", "in": "header",
                                                        "name": "X-API-Key", "description": ""}
    assert schemes["ConsoleSession"]["scheme"] == "bearer"
    either = [{"ApiKey": []}, {"ConsoleSession": []}]
    for path, operations in SPEC["paths"].items():
        for method, op in operations.items():
            if path in ("/health", "/metrics"):
                assert "security" not in op, path
            elif path in ("/recommend", "/recommend/{user_id}", "/auth/signin"):
                assert op["security"] == [*either, {}], path
            else:
                assert op["security"] == either, (method, path)
    with Rig() as rig:  # the header the schema names is the one the guard reads
        ok, refused = call(rig, ("GET", "/admin/experiments", key(ADMIN)),
                           ("GET", "/admin/experiments", {}))
        assert (ok.status_code, refused.status_code) == (200, 401)
