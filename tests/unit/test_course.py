"""The course's line shapes and slugs: every shape parses to an event that validates; slugs
resolve by title and year; unknown movies and other lines are refused with their reason."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from backend.data.batch import validate
from backend.data.course import (
    COURSE_REQUEST_TOPIC,
    CourseTopic,
    LineFormatError,
    SlugIndex,
    parse_line,
    words,
)
from backend.data.events import EVENT_MODELS, RatingEvent, WatchEvent

CATALOG = pd.DataFrame({
    "item_id": [1, 2, 3, 4, 5, 6, 7, 8],
    "title": ["Shawshank Redemption, The", "Seven (Se7en)", "Schindler's List",
              "City of Lost Children, The (Cité des enfants perdus, La)", "Chasing Amy",
              "Chasing Amy", "Amélie", "Untitled"],
    "year": pd.array([1994, 1995, 1993, 1995, 1997, 1997, 2001, None], dtype="Int64")})
INDEX = SlugIndex(CATALOG)


@pytest.mark.parametrize(("slug", "item"), [
    ("the+shawshank+redemption+1994", 1),
    ("shawshank+redemption+the+1994", 1),  # as the catalog writes it
    ("seven+1995", 2), ("se7en+1995", 2),  # the title and its alternate
    ("schindlers+list+1993", 3), ("schindler's+list+1993", 3), ("schindler+s+list+1993", 3),
    ("the+city+of+lost+children+1995", 4), ("cite+des+enfants+perdus+la+1995", 4),
    ("la+cite+des+enfants+perdus+1995", 4),
    ("chasing+amy+1997", 5),  # a duplicate title and year: the lower id
    ("amelie+2001", 7), ("Amélie+2001", 7),
    ("untitled", 8),  # no year in the catalog
    ("42", 42),  # an id stays an id
])
def test_slugs_resolve_by_title_and_year(slug, item):
    assert INDEX.item(slug) == item


@pytest.mark.parametrize("slug", ["the+shawshank+redemption+1995", "shawshank+1994",
                                  "the+godfather+1972", "seven"])
def test_a_slug_the_catalog_lacks_resolves_to_nothing(slug):
    assert INDEX.item(slug) is None


def test_words_ignore_case_accents_punctuation_and_apostrophes():
    assert words("Amélie: Le Fabuleux Destin d'Amélie!") == ("amelie", "le", "fabuleux",
                                                             "destin", "damelie")


def test_rate_lines_by_id_and_by_slug():
    topic, rec = parse_line("2024-05-01T10:00:00,123,GET /rate/456=4", INDEX)
    assert topic == "events.rating"
    assert {k: v for k, v in rec.items() if k != "event_id"} == {
        "ts": "2024-05-01T10:00:00Z", "user_id": 123, "item_id": 456, "rating": 4}
    RatingEvent.model_validate(rec)
    topic, rec = parse_line("2024-05-01T10:00:00,123,GET /rate/the+shawshank+redemption+1994"
                            "=5", INDEX)
    assert (topic, rec["item_id"], rec["rating"]) == ("events.rating", 1, 5)


def test_watch_lines_by_id_and_by_slug():
    topic, rec = parse_line("2024-05-01 10:00:00,123,GET /data/m/456/17.mpg\n", INDEX)
    assert topic == "events.watch" and rec["minutes"] == 17.0 and rec["item_id"] == 456
    assert rec["ts"] == "2024-05-01T10:00:00Z"  # no offset: UTC
    WatchEvent.model_validate(rec)
    _, rec = parse_line("2024-05-01T10:00:00+02:00,9,GET /data/m/se7en+1995/3.mpg", INDEX)
    assert (rec["item_id"], rec["minutes"], rec["ts"]) == (2, 3.0, "2024-05-01T10:00:00+02:00")


@pytest.mark.parametrize(("line", "status", "items", "ms"), [
    ("2024-05-01T10:00:00,77,recommendation request 17645-team05.isri.cmu.edu:8082, status "
     "200, result: seven+1995, 3, the+shawshank+redemption+1994, 184 ms", 200, [2, 3, 1], 184.0),
    ("2024-05-01T10:00:00,77,recommendation request 10.0.0.5:8082, status 200, result: 12, "
     "13, 0.5 ms", 200, [12, 13], 0.5),
    ("2024-05-01T10:00:00,77,recommendation request 10.0.0.5:8082, status 0, result: , "
     "0 ms", 0, [], 0.0),
])
def test_recommendation_request_lines(line, status, items, ms):
    topic, rec = parse_line(line, INDEX)
    assert topic == COURSE_REQUEST_TOPIC
    assert (rec["status"], rec["items"], rec["latency_ms"], rec["user_id"]) == (
        status, items, ms, 77)
    assert rec["server"] in ("17645-team05.isri.cmu.edu:8082", "10.0.0.5:8082")
    assert len(validate(EVENT_MODELS[COURSE_REQUEST_TOPIC], [rec]).valid) == 1


def test_the_event_id_is_the_lines_so_a_replayed_stream_dedupes():
    a = parse_line("2024-05-01T10:00:00,123,GET /rate/456=4", INDEX)[1]["event_id"]
    assert a == parse_line("2024-05-01T10:00:00,123,GET /rate/456=4\n", INDEX)[1]["event_id"]
    assert a != parse_line("2024-05-01T10:00:01,123,GET /rate/456=4", INDEX)[1]["event_id"]


@pytest.mark.parametrize(("line", "reason"), [
    ("2024-05-01T10:00:00,123,GET /rate/the+godfather+1972=4", "unknown movie: the+godfather"),
    ("2024-05-01T10:00:00,123,GET /data/m/nope+2000/1.mpg", "unknown movie: nope+2000"),
    ("2024-05-01T10:00:00,1,recommendation request s:1, status 200, result: 5, "
     "no+such+film+1999, 20 ms", "unknown movie: no+such+film"),
    ("2024-05-01T10:00:00,123,GET /recommend/123", "not a course-format"),
    ("2024-05-01T10:00:00,123,GET /rate/456=oops", "not a course-format"),
    ("2024-05-01T10:00:00,abc,GET /rate/456=4", "not a course-format"),
    ("", "not a course-format"),
    ("2024-05-01T10:00:00,123,GET /rate/²=4", "unknown movie"),  # not an ASCII digit
    ("2024-05-01T10:00:00,1²,GET /rate/5=4", "not a course-format"),
    ("2024-05-01T10:00:00," + "9" * 5000 + ",GET /rate/5=4", "not a course-format"),
    ("2024-05-01T10:00:00,1,GET /data/m/5/" + "9" * 5000 + ".mpg", "not a course-format"),
])
def test_other_lines_are_refused_with_their_reason(line, reason):
    with pytest.raises(LineFormatError, match=reason.replace("+", r"\+")):
        parse_line(line, INDEX)


def test_out_of_range_values_parse_then_fail_validation_like_any_record():
    _, rec = parse_line("2024-05-01T10:00:00,123,GET /rate/456=9", INDEX)
    assert validate(RatingEvent, [rec]).rejected


def test_a_course_topic_reads_the_catalog_at_its_first_line_and_again_for_a_new_slug():
    catalog = [CATALOG]
    reads = []
    topic = CourseTopic("course", lambda: reads.append(1) or catalog[0], reload_seconds=0)
    assert not reads  # nothing read until a course line arrives
    line = b"2024-05-01T10:00:00,5,GET /rate/new+film+2024=3"
    with pytest.raises(LineFormatError, match="unknown movie"):
        topic.translate(line)
    catalog[0] = pd.concat([CATALOG, pd.DataFrame({"item_id": [9], "title": ["New Film"],
                                                   "year": pd.array([2024], "Int64")})])
    name, value = topic.translate(line)
    assert name == "events.rating" and json.loads(value)["item_id"] == 9
    assert len(reads) == 3  # the first line, its retry, the line after the release
    slow = CourseTopic("course", lambda: reads.append(1) or catalog[0], reload_seconds=60)
    with pytest.raises(LineFormatError, match="unknown movie"):
        slow.translate(b"2024-05-01T10:00:00,5,GET /rate/newer+film+2025=3")
    assert len(reads) == 4  # read once; no second read within reload_seconds
    with pytest.raises(LineFormatError, match="not UTF-8"):
        topic.translate(b"\xff\xfe")
