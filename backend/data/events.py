"""Event contracts: one pydantic model per event is the single definition.

The pandera schema that validates micro-batches in the ingest job, and the Arrow schema of the
lake, are derived from the pydantic models here (`batch_schema`, `arrow_schema`), and a parity
test checks that the model and the schema accept and refuse the same records.

Stream records must be complete: `event_id` and `ts` default only for events built in-process
(the API and the bootstrap fill them before producing).
"""

from __future__ import annotations

import re
import types
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types as at
import pandas as pd
import pandera.pandas as pa
import pyarrow as arrow
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StringConstraints,
)

from backend.core.numbers import JSON_INTEGER

MAX_ID = 10_000_000
FUTURE_SKEW = timedelta(minutes=5)
MIN_TS = datetime(1990, 1, 1, tzinfo=UTC)
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# RFC 3339 with an offset, from the year 1990: what the schema states of `ts` (the instant's
# own range, 1990 UTC up to a few minutes from now, is the ingest's to check: no schema can
# say "not in the future", so a write outside it is accepted and dead-lettered with the reason)
TS_PATTERN = (r"^(199\d|[2-9]\d{3})-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?"
              r"(Z|[+-]\d\d:\d\d)$")
_TS = re.compile(TS_PATTERN)

# Namespace for deterministic event ids (bootstrap history, DLQ records): replays dedupe.
EVENT_NAMESPACE = uuid.UUID("6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f")


def _iso_utc_string(value: Any) -> Any:
    """Accept datetimes with a timezone and strings matching TS_PATTERN only (no epoch
    numbers)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamp must carry a timezone")
        return value
    if not isinstance(value, str) or not _TS.match(value):
        raise ValueError("timestamp must be RFC 3339 with an offset from the year 1990, e.g. "
                         "2024-05-01T10:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def new_event_id() -> str:
    return str(uuid.uuid4())


def utc_now() -> datetime:
    return datetime.now(UTC)


EventId = Annotated[str, StringConstraints(pattern=UUID_PATTERN)]
Timestamp = Annotated[datetime, BeforeValidator(_iso_utc_string), AfterValidator(_utc),
                      Field(json_schema_extra={"pattern": TS_PATTERN})]
UserId = Annotated[int, Field(ge=1, le=MAX_ID), JSON_INTEGER]
ItemId = Annotated[int, Field(ge=1, le=MAX_ID), JSON_INTEGER]


class Event(BaseModel):
    """Common fields: `event_id` is the idempotency key, `ts` the UTC event time."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    event_id: EventId = Field(default_factory=new_event_id)
    ts: Timestamp = Field(default_factory=utc_now)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready dict, as produced to Kafka."""
        return self.model_dump(mode="json")


class RatingEvent(Event):
    user_id: UserId
    item_id: ItemId
    rating: Annotated[int, Field(ge=1, le=5), JSON_INTEGER]


class WatchEvent(Event):
    user_id: UserId
    item_id: ItemId
    minutes: Annotated[StrictFloat, Field(ge=0, le=1440)]
    fraction: Annotated[StrictFloat, Field(ge=0, le=1)] | None = None


class RecoEvent(Event):
    request_id: EventId
    user_id: UserId
    variant: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    model_version: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    items: Annotated[list[ItemId], Field(max_length=100)]
    latency_ms: Annotated[StrictFloat, Field(ge=0, le=600_000)]
    # the experiment and allocation epoch the user was assigned under (None: none running)
    experiment: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None
    epoch: Annotated[int, Field(ge=0, le=1_000_000), JSON_INTEGER] | None = None


class CourseRequestEvent(Event):
    """A course stream's recommendation-request line: the course's server answered the user
    with `items` (its status and latency as the line gives them). It names no experiment or
    epoch, so it is its own topic, not `events.reco`."""

    user_id: UserId
    server: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    status: Annotated[int, Field(ge=0, le=999), JSON_INTEGER]
    items: Annotated[list[ItemId], Field(max_length=100)]
    latency_ms: Annotated[StrictFloat, Field(ge=0, le=600_000)]


class DlqEvent(Event):
    source_topic: Annotated[str, StringConstraints(max_length=256)]
    partition: Annotated[int, Field(ge=-1), JSON_INTEGER]
    offset: Annotated[int, Field(ge=-1), JSON_INTEGER]
    key: Annotated[str, StringConstraints(max_length=256)] | None = None
    raw: Annotated[str, StringConstraints(max_length=8192)]
    error: Annotated[str, StringConstraints(max_length=4096)]


EVENT_MODELS: dict[str, type[Event]] = {
    "events.rating": RatingEvent,
    "events.watch": WatchEvent,
    "events.reco": RecoEvent,
    "events.course_request": CourseRequestEvent,
    "events.dlq": DlqEvent,
}

# Lake-only columns added by the ingest job: where each row came from in Kafka.
SOURCE_COLUMNS = {"kafka_partition": arrow.int32(), "kafka_offset": arrow.int64()}


# --- derivation of batch (pandera) and lake (arrow) schemas from the models -----------------


@dataclass(frozen=True)
class FieldSpec:
    """What the batch validator needs to know about one model field."""

    name: str
    kind: str  # int | float | str | datetime | list_int
    nullable: bool
    ge: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    item: FieldSpec | None = None


def _unwrap(annotation: Any) -> tuple[Any, list[Any], bool]:
    """Strip Optional and Annotated layers: (base type, constraint metadata, nullable)."""
    nullable = False
    meta: list[Any] = []
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            meta.extend(extra)
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            nullable = nullable or len(args) < len(get_args(annotation))
            (annotation,) = args
        else:
            return annotation, meta, nullable


def _spec(name: str, annotation: Any, metadata: list[Any]) -> FieldSpec:
    base, meta, nullable = _unwrap(annotation)
    meta = meta + list(metadata)
    limits: dict[str, Any] = {}
    for m in meta:
        items = getattr(m, "metadata", None) or [m]  # FieldInfo inside Annotated holds a list
        for c in items:
            if isinstance(c, at.Ge):
                limits["ge"] = c.ge
            elif isinstance(c, at.Le):
                limits["le"] = c.le
            elif isinstance(c, at.MinLen):
                limits["min_length"] = c.min_length
            elif isinstance(c, at.MaxLen):
                limits["max_length"] = c.max_length
            elif isinstance(c, StringConstraints):
                limits.update(
                    {k: v for k, v in (("min_length", c.min_length),
                                       ("max_length", c.max_length),
                                       ("pattern", c.pattern)) if v is not None}
                )
    if get_origin(base) is list:
        (item_ann,) = get_args(base)
        item = _spec(f"{name}[]", item_ann, [])
        return FieldSpec(name, "list_int", nullable, item=item, **limits)
    kind = {int: "int", float: "float", str: "str", datetime: "datetime"}[base]
    return FieldSpec(name, kind, nullable, **limits)


def field_specs(model: type[BaseModel]) -> list[FieldSpec]:
    return [_spec(n, f.annotation, f.metadata) for n, f in model.model_fields.items()]


def _type_ok(kind: str, s: pd.Series) -> pd.Series:
    t = s.map(type)
    if kind == "int":  # a whole float is a JSON integer (typed_frame casts it)
        whole = t.isin([float]) & s.map(lambda v: isinstance(v, float) and v.is_integer())
        return t.isin([int]) | whole.astype(bool)
    if kind == "float":
        ok = t.isin([int, float])
        vals = pd.to_numeric(s.where(ok), errors="coerce").astype("float64")
        return ok & vals.abs().lt(float("inf"))
    if kind in ("str", "datetime"):
        return t.isin([str])
    raise ValueError(kind)


def _checks(spec: FieldSpec) -> list[pa.Check]:
    """Vectorised checks over an object column, mirroring the pydantic constraints.

    Check functions get private names: pandera dispatches names such as `in_range` to its
    own built-in checks.
    """
    if spec.kind == "list_int":
        item = spec.item
        assert item is not None and item.ge is not None and item.le is not None
        lo, hi = item.ge, item.le

        def _list_ok(s: pd.Series) -> pd.Series:
            def one(v: Any) -> bool:
                return type(v) is list and (spec.max_length is None or len(v) <= spec.max_length) \
                    and all(type(x) is int and lo <= x <= hi for x in v)
            return s.map(one).astype(bool)

        return [pa.Check(_list_ok, name=f"list of ints in [{item.ge}, {item.le}], "
                                       f"at most {spec.max_length}")]
    kind = spec.kind
    checks = [pa.Check(lambda s, k=kind: _type_ok(k, s), name=f"type {kind}")]
    if spec.ge is not None or spec.le is not None:
        lo = -float("inf") if spec.ge is None else spec.ge
        hi = float("inf") if spec.le is None else spec.le

        def _range_ok(s: pd.Series, lo: float = lo, hi: float = hi) -> pd.Series:
            ok = _type_ok(kind, s)
            vals = pd.to_numeric(s.where(ok), errors="coerce")
            return ~ok | vals.between(lo, hi)

        checks.append(pa.Check(_range_ok, name=f"range [{spec.ge}, {spec.le}]"))
    if spec.min_length is not None or spec.max_length is not None:
        lo_len = spec.min_length or 0
        hi_len = spec.max_length if spec.max_length is not None else 2**62

        def _length_ok(s: pd.Series, lo: int = lo_len, hi: int = hi_len) -> pd.Series:
            ok = _type_ok("str", s)
            return ~ok | s.where(ok, "").str.len().between(lo, hi)

        checks.append(pa.Check(_length_ok, name=f"length [{lo_len}, {hi_len}]"))
    if spec.pattern is not None:
        rx = re.compile(spec.pattern)

        def _pattern_ok(s: pd.Series) -> pd.Series:
            ok = _type_ok("str", s)
            return ~ok | s.where(ok, "").str.fullmatch(rx).fillna(False).astype(bool)

        checks.append(pa.Check(_pattern_ok, name="pattern"))
    if kind == "datetime":

        def _time_ok(s: pd.Series) -> pd.Series:
            ok = _type_ok("str", s)
            text = s.where(ok, "")
            parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
            now = pd.Timestamp(datetime.now(UTC) + FUTURE_SKEW)
            good = text.str.fullmatch(_TS).fillna(False) & parsed.notna() & parsed.between(
                pd.Timestamp(MIN_TS), now
            )
            return ~ok | good.fillna(False).astype(bool)

        checks.append(pa.Check(_time_ok, name="RFC 3339 with an offset, 1990..now+5min"))
    return checks


def batch_schema(model: type[Event]) -> pa.DataFrameSchema:
    """Pandera schema over a frame of raw decoded values (object columns), derived from `model`."""
    columns = {
        s.name: pa.Column(object, _checks(s), nullable=s.nullable, required=True)
        for s in field_specs(model)
    }
    return pa.DataFrameSchema(columns, strict=True)


_ARROW = {
    "int": arrow.int64(),
    "float": arrow.float64(),
    "str": arrow.string(),
    "datetime": arrow.timestamp("us", tz="UTC"),
    "list_int": arrow.list_(arrow.int64()),
}


def arrow_schema(model: type[Event]) -> arrow.Schema:
    """The lake's Parquet schema for `model`'s topic (model fields plus Kafka source columns)."""
    fields = [arrow.field(s.name, _ARROW[s.kind], nullable=s.nullable) for s in field_specs(model)]
    fields += [arrow.field(n, t, nullable=False) for n, t in SOURCE_COLUMNS.items()]
    return arrow.schema(fields)


def typed_frame(model: type[Event], frame: pd.DataFrame) -> pd.DataFrame:
    """Cast a validated object frame to the lake's column types."""
    out = frame.copy()
    for s in field_specs(model):
        col = out[s.name]
        if s.kind == "int":
            out[s.name] = col.astype("Int64" if s.nullable else "int64")
        elif s.kind == "float":
            out[s.name] = col.astype("float64")
        elif s.kind == "datetime":
            out[s.name] = pd.to_datetime(col, utc=True, format="ISO8601")
        elif s.name == "event_id" or s.name == "request_id":
            out[s.name] = col.str.lower()
    return out
