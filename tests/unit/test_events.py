"""The pydantic models and the derived pandera schema must accept and refuse the same records."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from backend.data.batch import validate
from backend.data.events import (
    EVENT_MODELS,
    TS_PATTERN,
    RatingEvent,
    RecoEvent,
    WatchEvent,
    arrow_schema,
)

NOW = datetime.now(UTC)
EID = "0b6f5a3c-1d2e-4f50-8a9b-0c1d2e3f4a5b"
RATING = {"event_id": EID, "ts": "2024-05-01T10:00:00Z", "user_id": 7, "item_id": 42, "rating": 4}
WATCH = {"event_id": EID, "ts": "2024-05-01T10:00:00+02:00", "user_id": 7, "item_id": 42,
         "minutes": 12.5, "fraction": None}
RECO = {"event_id": EID, "ts": "2024-05-01T10:00:00Z", "request_id": EID, "user_id": 7,
        "variant": "A", "model_version": "knn-3", "items": [1, 2, 3], "latency_ms": 3.2}

CASES = [
    (RatingEvent, RATING, True),
    (RatingEvent, RATING | {"rating": 0}, False),
    (RatingEvent, RATING | {"rating": 6}, False),
    (RatingEvent, RATING | {"rating": 4.0}, True),  # a whole JSON number is an integer
    (RatingEvent, RATING | {"rating": 4.5}, False),
    (RatingEvent, RATING | {"user_id": 7.0}, True),
    (RatingEvent, RATING | {"rating": "4"}, False),
    (RatingEvent, RATING | {"rating": True}, False),
    (RatingEvent, RATING | {"user_id": -3}, False),
    (RatingEvent, RATING | {"user_id": 10**12}, False),
    (RatingEvent, RATING | {"user_id": None}, False),
    (RatingEvent, RATING | {"event_id": "not-a-uuid"}, False),
    (RatingEvent, RATING | {"event_id": EID.upper()}, True),
    (RatingEvent, RATING | {"ts": "2024-05-01T10:00:00"}, False),
    (RatingEvent, RATING | {"ts": 1714557600}, False),
    (RatingEvent, RATING | {"ts": (NOW + timedelta(minutes=1)).isoformat()}, True),
    (RatingEvent, RATING | {"ts": "1970-01-01T00:00:00Z"}, False),
    (RatingEvent, RATING | {"ts": "2024-05-01T10:00:00+0200"}, False),
    (RatingEvent, RATING | {"ts": "2024-05-01 10:00:00Z"}, False),
    (RatingEvent, RATING | {"ts": "yesterday Z"}, False),
    (WatchEvent, WATCH, True),
    (WatchEvent, WATCH | {"minutes": 3}, True),
    (WatchEvent, WATCH | {"minutes": -1.0}, False),
    (WatchEvent, WATCH | {"minutes": float("nan")}, False),
    (WatchEvent, WATCH | {"minutes": float("inf")}, False),
    (WatchEvent, WATCH | {"fraction": 0.5}, True),
    (WatchEvent, WATCH | {"fraction": 1.5}, False),
    (WatchEvent, WATCH | {"minutes": False}, False),
    (RecoEvent, RECO, True),
    (RecoEvent, RECO | {"items": []}, True),
    (RecoEvent, RECO | {"items": list(range(1, 102))}, False),
    (RecoEvent, RECO | {"items": [1, "2"]}, False),
    (RecoEvent, RECO | {"items": [0]}, False),
    (RecoEvent, RECO | {"items": "1,2"}, False),
    (RecoEvent, RECO | {"variant": ""}, False),
    (RecoEvent, RECO | {"variant": "x" * 33}, False),
    (RecoEvent, RECO | {"variant": 1}, False),
    (RecoEvent, RECO | {"latency_ms": -0.1}, False),
]


@pytest.mark.parametrize(("model", "record", "ok"), CASES)
def test_model_and_batch_schema_agree(model, record, ok):
    try:
        model.model_validate(record)
        model_ok = True
    except ValidationError:
        model_ok = False
    result = validate(model, [record])
    batch_ok = len(result.valid) == 1
    assert (model_ok, batch_ok) == (ok, ok), result.rejected


@pytest.mark.parametrize("ts", [(NOW + timedelta(hours=1)).isoformat(),
                                "1990-01-01T00:30:00+01:00"])
def test_an_instant_outside_1990_to_now_is_the_ingests_to_refuse(ts):
    """No schema states "not in the future": the API's model takes it (its pattern holds)
    and the ingest's batch check dead-letters it with the reason."""
    record = RATING | {"ts": ts}
    assert RatingEvent.model_validate(record).ts.tzinfo is not None
    (refused,) = validate(RatingEvent, [record]).rejected
    assert "ts: failed RFC 3339 with an offset, 1990..now+5min" in refused.reason


def test_the_schema_states_the_timestamp_pattern_and_integer_types():
    schema = RatingEvent.model_json_schema()["properties"]
    assert schema["ts"]["pattern"] == TS_PATTERN and schema["ts"]["format"] == "date-time"
    assert schema["rating"]["type"] == "integer" and schema["user_id"]["maximum"] == 10**7


def test_unknown_fields_refused_by_both():
    record = RATING | {"stars": 5}
    with pytest.raises(ValidationError):
        RatingEvent.model_validate(record)
    result = validate(RatingEvent, [record])
    assert "unknown fields" in result.rejected[0].reason


def test_batch_keeps_valid_rows_and_names_reasons():
    records = [RATING, RATING | {"rating": 9}, RATING | {"event_id": str(uuid.uuid4())}]
    result = validate(RatingEvent, records)
    assert list(result.valid["_pos"]) == [0, 2]
    assert [r.index for r in result.rejected] == [1]
    assert "rating" in result.rejected[0].reason and "range" in result.rejected[0].reason
    assert str(result.valid["ts"].dtype) == "datetime64[us, UTC]"


def test_arrow_schema_matches_models():
    for model in EVENT_MODELS.values():
        names = arrow_schema(model).names
        assert names[: len(model.model_fields)] == list(model.model_fields)
        assert names[-2:] == ["kafka_partition", "kafka_offset"]


def test_api_defaults_fill_id_and_time():
    e = RatingEvent(user_id=1, item_id=2, rating=3)
    uuid.UUID(e.event_id)
    assert e.ts.tzinfo is not None
    rec = e.to_record()
    assert len(validate(RatingEvent, [rec]).valid) == 1
