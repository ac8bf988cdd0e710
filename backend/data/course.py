"""The course's stream formats: its text log lines as events, its movie slugs as item ids.

Three line shapes (the course's Kafka stream and its log files):

    <time>,<user_id>,GET /rate/<movie>=<rating>
    <time>,<user_id>,GET /data/m/<movie>/<minute>.mpg
    <time>,<user_id>,recommendation request <server>, status <code>, result: <movies>, <n> ms

`<movie>` is a catalog id or a slug: the title's words and the year joined by "+"
(`the+shawshank+redemption+1994`). A line becomes (topic, record); the record is not
validated here, the ingest validates it like any other. Its event id is derived from the line,
so a replayed stream dedupes.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from backend.data.events import EVENT_NAMESPACE

COURSE_REQUEST_TOPIC = "events.course_request"
TZ_SUFFIX = re.compile(r"(?:Z|[+-]\d\d:?\d\d)$")

# ASCII digits, bounded: a number the contracts could take (`\d` would match "²", which
# int() refuses); anything else is not a course line
_INT = r"[0-9]{1,12}"
_PREFIX = rf"^(?P<ts>[^,]{{1,64}}),(?P<user>{_INT}),"
_RATE = re.compile(_PREFIX + rf"GET /rate/(?P<item>[^=/\s]{{1,300}})=(?P<rating>{_INT})$")
_WATCH = re.compile(_PREFIX + rf"GET /data/m/(?P<item>[^/\s]{{1,300}})/(?P<min>{_INT})\.mpg$")
_REQUEST = re.compile(_PREFIX + r"recommendation request (?P<server>[^,]{1,256}), status "
                      rf"(?P<status>{_INT}), result: (?P<result>.*?),? "
                      r"(?P<ms>[0-9]{1,12}(?:\.[0-9]{1,9})?) ?ms$")
# an article the catalog moves to the end ("Usual Suspects, The"); slugs put it first
_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<article>the|a|an|les|la|le|l'|il|el|das|der|die)$",
                      re.IGNORECASE)
_ALTERNATE = re.compile(r"\s*\((?P<alt>[^()]*)\)\s*$")  # "Seven (Se7en)"


class LineFormatError(ValueError):
    """A text line that is not one of the course formats, or names a movie the catalog lacks
    (the ingest dead-letters it with this message as the reason)."""


class UnknownMovie(LineFormatError):
    """A course line naming a movie the catalog does not have."""


def words(text: str, apostrophe: str = "") -> tuple[str, ...]:
    """The comparable form of a title or slug: ASCII letters and digits, lower case, an
    apostrophe replaced by `apostrophe` ("Schindler's": "schindlers", or with " ",
    "schindler s": slugs are written both ways)."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return tuple(re.findall(r"[a-z0-9]+", plain.lower().replace("'", apostrophe)))


def _titles(title: str) -> Iterable[str]:
    """A catalog title's readings: as written, article first, and its alternate title."""
    alternates = []
    while m := _ALTERNATE.search(title):
        alternates.append(m["alt"])
        title = title[:m.start()]
    for t in (title, *alternates):
        yield t
        if m := _ARTICLE.match(t.strip()):
            yield f"{m['article']} {m['rest']}"


class SlugIndex:
    """Catalog slugs to item ids: the words of each title reading (an apostrophe dropped or
    a word break) plus the year. Two items with the same title and year (the catalog has a
    few duplicates) resolve to the lower id."""

    def __init__(self, catalog: pd.DataFrame) -> None:
        self._ids: dict[tuple[str, ...], int] = {}
        rows = catalog.sort_values("item_id")
        years = rows["year"].astype("Int64").astype("string").fillna("")
        for item, title, year in zip(rows["item_id"].tolist(), rows["title"].astype(str),
                                     years, strict=True):
            for reading in _titles(title):
                for apostrophe in ("", " "):
                    self._ids.setdefault(words(reading, apostrophe) + ((year,) if year else ()),
                                         int(item))

    def __len__(self) -> int:
        return len(self._ids)

    def item(self, movie: str) -> int | None:
        """The item a line's movie names: an id as is, a slug through the catalog."""
        if re.fullmatch(_INT, movie):
            return int(movie)
        return self._ids.get(words(movie.replace("+", " ")))


def _item(index: SlugIndex, movie: str) -> int:
    item = index.item(movie)
    if item is None:
        raise UnknownMovie(f"unknown movie: {movie[:200]}")
    return item


def parse_line(line: str, index: SlugIndex) -> tuple[str, dict[str, Any]]:
    """Adapt one course line to (topic, record); raises LineFormatError (not a course line,
    or an unknown movie), never another error: the ingest dead-letters what this refuses.
    Times without an offset are taken as UTC; a watch's `minutes` is the minute of the movie
    reached."""
    try:
        return _parse(line, index)
    except LineFormatError:
        raise
    except ValueError as exc:  # a number the patterns let through but Python refuses
        raise LineFormatError(f"not a course-format line: {exc}") from None


def _parse(line: str, index: SlugIndex) -> tuple[str, dict[str, Any]]:
    text = line.strip()
    record: dict[str, Any]
    if m := _RATE.match(text):
        topic, record = "events.rating", {"item_id": _item(index, m["item"]),
                                          "rating": int(m["rating"])}
    elif m := _WATCH.match(text):
        topic, record = "events.watch", {"item_id": _item(index, m["item"]),
                                         "minutes": float(m["min"])}
    elif m := _REQUEST.match(text):
        result = [r.strip() for r in m["result"].split(",") if r.strip()]
        topic, record = COURSE_REQUEST_TOPIC, {
            "server": m["server"].strip(), "status": int(m["status"]),
            "items": [_item(index, r) for r in result], "latency_ms": float(m["ms"])}
    else:
        raise LineFormatError(f"not a course-format rate, watch or recommendation-request "
                              f"line: {text[:200]!r}")
    ts = m["ts"].strip()
    if not TZ_SUFFIX.search(ts):
        ts = ts.replace(" ", "T") + "Z"
    return topic, {"event_id": str(uuid.uuid5(EVENT_NAMESPACE, text)), "ts": ts,
                   "user_id": int(m["user"]), **record}


class CourseTopic:
    """An external topic carrying course lines: the ingest reads it beside its own topics and
    translates each message to the event topic its line names. The catalog is read at the
    first line; an unknown slug reads it again (at most every `reload_seconds`: the
    simulator releases items) before it is refused."""

    def __init__(self, name: str, catalog: Callable[[], pd.DataFrame],
                 reload_seconds: float = 60.0) -> None:
        self.name = name
        self._catalog = catalog
        self._reload_seconds = reload_seconds
        self._index: SlugIndex | None = None
        self._loaded = 0.0

    def translate(self, value: bytes | None) -> tuple[str, bytes]:
        """(event topic, JSON value) of one message; raises LineFormatError."""
        try:
            line = (value or b"").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LineFormatError(f"not UTF-8 text: {exc}") from None
        if self._index is None:  # first course line: the catalog, once
            self._index, self._loaded = SlugIndex(self._catalog()), time.monotonic()
        try:
            topic, record = parse_line(line, self._index)
        except UnknownMovie:
            if time.monotonic() - self._loaded < self._reload_seconds:
                raise
            self._index, self._loaded = SlugIndex(self._catalog()), time.monotonic()
            topic, record = parse_line(line, self._index)
        return topic, json.dumps(record, separators=(",", ":")).encode()
