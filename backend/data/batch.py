"""Decode and validate a micro-batch of raw Kafka values against an event contract.

Decoding is per message (it must be: each value is its own JSON document); validation is one
pandera call per batch over object columns. Every refused record comes back with a reason, so
the caller can send it to the DLQ: nothing is dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pandas as pd
import pandera.pandas as pa

from backend.data.events import EVENT_MODELS, Event, batch_schema, field_specs, typed_frame


@dataclass
class Rejected:
    index: int  # position of the message in the batch
    reason: str


@dataclass
class BatchResult:
    valid: pd.DataFrame  # typed rows; column `_pos` is the message position in the batch
    rejected: list[Rejected] = field(default_factory=list)


@cache
def _schema(model: type[Event]) -> pa.DataFrameSchema:
    return batch_schema(model)


@cache
def _fields(model: type[Event]) -> tuple[str, ...]:
    return tuple(s.name for s in field_specs(model))


def decode(values: list[bytes | None], max_bytes: int) -> tuple[list[dict[str, Any]], list[int],
                                                                 list[Rejected]]:
    """JSON-decode values; returns (records, their positions, rejected)."""
    records: list[dict[str, Any]] = []
    positions: list[int] = []
    rejected: list[Rejected] = []
    for i, raw in enumerate(values):
        if raw is None:
            rejected.append(Rejected(i, "empty message (null value)"))
            continue
        if len(raw) > max_bytes:
            rejected.append(Rejected(i, f"oversized: {len(raw)} bytes > {max_bytes}"))
            continue
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            rejected.append(Rejected(i, f"malformed JSON: {str(exc)[:200]}"))
            continue
        if not isinstance(obj, dict):
            rejected.append(Rejected(i, f"not a JSON object: {type(obj).__name__}"))
            continue
        records.append(obj)
        positions.append(i)
    return records, positions, rejected


def validate(model: type[Event], records: list[dict[str, Any]],
             positions: list[int] | None = None) -> BatchResult:
    """Validate decoded records as one batch; reasons name the column and the failed check."""
    positions = list(range(len(records))) if positions is None else positions
    names = _fields(model)
    known = set(names)
    rejected: dict[int, list[str]] = {}
    for row, rec in enumerate(records):  # unknown fields: a set difference, no per-field work
        extra = rec.keys() - known
        if extra:
            rejected.setdefault(row, []).append(f"unknown fields: {sorted(extra)[:5]}")
    frame = pd.DataFrame(
        {n: pd.Series([r.get(n) for r in records], dtype=object) for n in names},
        index=pd.RangeIndex(len(records)),
    )
    try:
        _schema(model).validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        for idx, col, check, case in zip(cases["index"], cases["column"], cases["check"],
                                         cases["failure_case"], strict=True):
            if idx is None or pd.isna(idx):
                if check == "not_nullable":
                    continue  # summary row; the per-row cases carry the detail
                # a check that could not run: refuse the whole batch rather than pass it
                for row in range(len(records)):
                    rejected.setdefault(row, []).append(f"{col}: {check} errored ({case})")
                continue
            if check == "not_nullable":
                msg = f"{col}: missing or null"
            else:
                msg = f"{col}: failed {check} (got {str(case)[:80]!r})"
            rejected.setdefault(int(idx), []).append(msg)
    bad = sorted(rejected)
    valid = frame.drop(index=bad)
    valid = typed_frame(model, valid)
    valid["_pos"] = [positions[i] for i in valid.index]
    return BatchResult(
        valid=valid.reset_index(drop=True),
        rejected=[Rejected(positions[i], "; ".join(rejected[i])) for i in bad],
    )


def process(topic: str, values: list[bytes | None], max_bytes: int) -> BatchResult:
    """Decode then validate one batch of a topic's raw values."""
    records, positions, rejected = decode(values, max_bytes)
    result = validate(EVENT_MODELS[topic], records, positions)
    result.rejected = sorted(rejected + result.rejected, key=lambda r: r.index)
    return result
