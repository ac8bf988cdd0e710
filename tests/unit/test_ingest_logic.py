"""IngestLogic with a real lake in a temp folder and a recording DLQ sink."""

from __future__ import annotations

import json
import uuid

import pytest

from backend.data.course import CourseTopic
from backend.data.ingest import IngestLogic, Message
from backend.data.lake import Lake
from tests.unit.test_course import CATALOG


def rating(**kw):
    rec = {"event_id": str(uuid.uuid4()), "ts": "2024-01-01T00:00:00Z", "user_id": 1,
           "item_id": 2, "rating": 5} | kw
    return json.dumps(rec).encode()


def msgs(values, topic="events.rating", start=0):
    return [Message(topic, 0, start + i, b"1", v) for i, v in enumerate(values)]


@pytest.fixture
def sink():
    return []


def make(tmp_path, sink):
    return IngestLogic(Lake(tmp_path), 4096, 7, sink.extend)


def test_valid_deduped_invalid_dead_lettered(tmp_path, sink):
    logic = make(tmp_path, sink)
    dup = rating()
    values = [rating(), dup, dup, b"{not json", rating(rating=7), b"x" * 5000, rating()]
    logic.handle(msgs(values))
    lake = Lake(tmp_path).read("events.rating")
    assert lake["event_id"].is_unique
    assert sorted(lake["kafka_offset"]) == [0, 1, 6]  # offset 2 repeats offset 1's event
    assert [e.offset for e in sink] == [3, 4, 5]
    assert {e.source_topic for e in sink} == {"events.rating"}
    assert "malformed JSON" in sink[0].error and "rating" in sink[1].error
    assert "oversized" in sink[2].error
    s = logic.stats
    assert (s.consumed["events.rating"], s.valid["events.rating"],
            s.invalid["events.rating"], s.deduplicated["events.rating"]) == (7, 4, 3, 1)



def test_course_lines_land_as_the_events_they_name_and_the_rest_dead_letters(tmp_path, sink):
    logic = IngestLogic(Lake(tmp_path), 4096, 7, sink.extend,
                        course=CourseTopic("course", lambda: CATALOG))
    lines = [b"2024-05-01T10:00:00,5,GET /rate/seven+1995=4",
             b"2024-05-01T10:00:01,5,GET /data/m/3/20.mpg",
             b"2024-05-01T10:00:02,5,recommendation request s:1, status 200, result: 1, 2, 9 ms",
             b"2024-05-01T10:00:03,5,GET /rate/the+godfather+1972=4",  # unknown movie
             b"2024-05-01T10:00:04,5,GET /rate/seven+1995=9",  # parses, fails validation
             b"hello"]
    batch = msgs(lines, topic="course", start=100) + msgs([rating()], start=7)
    logic.handle(batch)
    logic.handle(batch)  # replayed: the line's event id dedupes it
    lake = Lake(tmp_path)
    rated = lake.read("events.rating")
    assert sorted(rated["item_id"]) == [2, 2] and sorted(rated["kafka_offset"]) == [7, 100]
    assert lake.read("events.watch")["item_id"].tolist() == [3]
    request = lake.read("events.course_request")
    assert request["items"].map(list).tolist() == [[1, 2]] and request["server"][0] == "s:1"
    first = sink[:3]
    assert [(e.source_topic, e.offset) for e in first] == [("course", 103), ("course", 105),
                                                           ("course", 104)]
    assert "unknown movie: the+godfather+1972" in first[0].error
    assert "not a course-format" in first[1].error and "rating" in first[2].error
    assert first[2].raw == lines[4].decode()  # the line, not its translation
    assert (logic.stats.consumed["course"], logic.stats.invalid["course"]) == (12, 4)

def test_replayed_batch_after_crash_writes_nothing(tmp_path, sink):
    values = [rating() for _ in range(10)]
    make(tmp_path, sink).handle(msgs(values))
    # a new process (after a crash before commit) sees the same batch again
    again = make(tmp_path, sink)
    again.handle(msgs(values))
    assert Lake(tmp_path).count("events.rating") == 10
    assert again.stats.deduplicated["events.rating"] == 10


def test_dlq_failure_writes_nothing_to_lake(tmp_path):
    def broken(_events):
        raise ConnectionError("broker away")

    logic = IngestLogic(Lake(tmp_path), 4096, 7, broken)
    with pytest.raises(ConnectionError):
        logic.handle(msgs([rating(), b"garbage"]))
    assert Lake(tmp_path).count("events.rating") == 0  # nothing lands before the DLQ is acked


def test_dlq_records_are_deterministic(tmp_path, sink):
    logic = make(tmp_path, sink)
    logic.handle(msgs([b"garbage"]))
    logic.handle(msgs([b"garbage"]))
    assert sink[0].event_id == sink[1].event_id  # a replay dedupes in the DLQ lake too


def test_per_message_baseline_gives_the_same_result(tmp_path, sink):
    values = [rating(), b"{bad", rating(rating=0), rating()]
    batched, single = [], []
    IngestLogic(Lake(tmp_path / "a"), 4096, 7, batched.extend).handle(msgs(values))
    IngestLogic(Lake(tmp_path / "b"), 4096, 7, single.extend, per_message=True).handle(
        msgs(values))
    a, b = Lake(tmp_path / "a").read("events.rating"), Lake(tmp_path / "b").read("events.rating")
    assert sorted(a["event_id"]) == sorted(b["event_id"]) and len(a) == 2
    assert [(e.offset, e.error) for e in batched] == [(e.offset, e.error) for e in single]


def test_refresh_sees_what_another_member_wrote(tmp_path, sink):
    values = [rating() for _ in range(5)]
    taker = make(tmp_path, sink)  # started before the other member wrote anything
    make(tmp_path, sink).handle(msgs(values))  # a member that then crashed before commit
    taker.refresh()  # what the rebalance listener does on assignment
    taker.handle(msgs(values))
    assert Lake(tmp_path).count("events.rating") == 5
    assert taker.stats.deduplicated["events.rating"] == 5


def _member(assigned, idle, failing=False):
    return {"assigned": assigned, "known": ["r:0", "r:1", "r:2"], "idle": idle,
            "failing": failing}


@pytest.mark.parametrize("members, done", [
    ([_member(["r:0", "r:1"], 9), _member(["r:2"], 9)], True),
    # the crashed member's partition is held by nobody until the rebalance
    ([_member(["r:1"], 9), _member(["r:2"], 9), _member([], 20)], False),
    ([_member(["r:0", "r:1"], 9), _member(["r:2"], 1)], False),  # still reading
    ([_member(["r:0", "r:1"], 9), _member(["r:2"], 9, failing=True)], False),  # broker away
    ([_member([], 9) | {"known": []}], False),  # no metadata yet
])
def test_group_is_drained_only_when_all_partitions_are_held_and_idle(members, done):
    from jobs.ingest import drained
    assert drained(members, 8) is done
