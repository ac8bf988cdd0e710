"""Schema evolution, as the original project learnt it: an event contract gains an optional
field; events with it and without it land in the same table, rows written before read it as
null, a reader that predates the field keeps working, and a model trains on both."""

from __future__ import annotations

import json
import uuid
from typing import Annotated

import pytest
from pydantic import StringConstraints

from backend.data import events
from backend.data.batch import process
from backend.data.events import RatingEvent
from backend.data.lake import Lake
from backend.ml.recommenders import ItemKNN
from backend.training.dataset import load_training_set
from tests.unit.test_training import _landed, lake_settings  # noqa: F401 (a fixture)


class RatingEventV2(RatingEvent):
    """The next contract: which device the rating came from (optional: old producers)."""

    device: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None


def validate_topic(topic, records):
    """The ingest's own path: raw message values, decoded and validated as the topic's
    contract (looked up at each batch) says."""
    return process(topic, [json.dumps(r).encode() for r in records], 16384)


def _ratings(users, device):
    out = [{"event_id": str(uuid.uuid4()), "ts": "2024-03-01T12:00:00Z", "user_id": u,
            "item_id": i, "rating": 5} for u in users for i in (1, 2, 3)]
    return [r | {"device": device} for r in out] if device else out


@pytest.mark.usefixtures("lake_settings")
def test_a_contract_gains_an_optional_field_and_old_and_new_events_land_and_train(
        lake_settings, monkeypatch):  # noqa: F811
    lake = Lake.open(lake_settings)
    before = lake.read("events.rating")
    monkeypatch.setitem(events.EVENT_MODELS, "events.rating", RatingEventV2)
    # the upgraded ingest validates both shapes: the new field is optional
    new = validate_topic("events.rating", _ratings([901, 902], "tv"))
    old_shape = validate_topic("events.rating", _ratings([903], None))
    assert not new.rejected and not old_shape.rejected
    lake.write("events.rating", _landed(RatingEventV2, _ratings([901, 902], "tv")))
    lake.write("events.rating", _landed(RatingEventV2, _ratings([903], None)))
    rows = lake.read("events.rating")
    assert len(rows) == len(before) + 9
    assert rows["device"].isna().sum() == len(before) + 3  # old rows and the old shape: null
    assert set(rows.loc[rows["device"].notna(), "user_id"]) == {901, 902}
    upgraded = load_training_set(lake_settings)
    assert {901, 902, 903} <= set(upgraded.interactions["user_id"])

    monkeypatch.setitem(events.EVENT_MODELS, "events.rating", RatingEvent)  # an old reader
    lake.write("events.rating", _landed(RatingEvent, _ratings([905], None)))  # an old writer
    old = lake.read("events.rating")
    assert "device" not in old.columns and len(old) == len(rows) + 3
    data = load_training_set(lake_settings)
    assert {901, 902, 903, 905} <= set(data.interactions["user_id"])
    model = ItemKNN().fit(data.train, data.items, data.users)
    assert model.recommend_many([901], 2)[901]  # trained on rows of both contracts
    # an ingest that predates the field refuses it with the reason (to the DLQ, replayable)
    refused = validate_topic("events.rating", _ratings([904], "tv"))
    assert len(refused.rejected) == 3 and "device" in refused.rejected[0].reason
