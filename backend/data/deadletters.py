"""Dead letters: what the ingest job refused, counted by reason, and replayed on request.

Shared by `reco dlq`, the admin API and the console, so the three count and replay alike.
A replay produces the raw messages back to their source topics: the ingest job validates
them again, lands the valid ones (deduplicated by `event_id`, so a second replay adds
nothing) and dead-letters the rest again (the DLQ records' ids are derived, so they dedupe
too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from backend.data.lake import Lake

log = logging.getLogger(__name__)
DLQ = "events.dlq"
REPLAYABLE = ("events.rating", "events.watch", "events.reco")
REASON_CHARS = 120
SendRaw = Callable[[str, bytes, "bytes | None"], None]


class ReasonCount(BaseModel):
    model_config = ConfigDict(frozen=True)

    source_topic: str
    reason: str
    count: int


class DeadLetterCounts(BaseModel):
    """Dead letters matching a filter: how many, how many a replay would send, and why."""

    model_config = ConfigDict(frozen=True)

    total: int
    replayable: int
    reasons: list[ReasonCount]


def reason(error: pd.Series) -> pd.Series:
    """An error's first line, cut to `REASON_CHARS`: what groups dead letters."""
    return error.str.split("\n").str[0].str.slice(0, REASON_CHARS)


class DeadLetters:
    """The lake's `events.dlq`, filtered by source topic and error text."""

    def __init__(self, lake: Lake, cache: Path | None = None) -> None:
        self.lake = lake
        self.cache = cache

    def read(self, topic: str | None = None, contains: str | None = None) -> pd.DataFrame:
        frame = self.lake.read(DLQ, cache=self.cache)
        if topic:
            frame = frame[frame["source_topic"] == topic]
        if contains:
            frame = frame[frame["error"].str.contains(contains, regex=False)]
        return frame.assign(reason=reason(frame["error"]))

    def counts(self, topic: str | None = None, contains: str | None = None
               ) -> DeadLetterCounts:
        frame = self.read(topic, contains)
        grouped = (frame.groupby(["source_topic", "reason"]).size().rename("n")
                   .reset_index().sort_values("n", ascending=False))
        return DeadLetterCounts(
            total=len(frame), replayable=int(frame["source_topic"].isin(REPLAYABLE).sum()),
            reasons=[ReasonCount(source_topic=src, reason=why, count=n)
                     for src, why, n in zip(grouped["source_topic"].tolist(),
                                            grouped["reason"].tolist(), grouped["n"].tolist(),
                                            strict=True)])

    def replay(self, send_raw: SendRaw, topic: str | None = None,
               contains: str | None = None) -> int:
        """Produce the matching dead letters' raw messages to their source topics; how many."""
        frame = self.read(topic, contains)
        frame = frame[frame["source_topic"].isin(REPLAYABLE)]
        for row in frame.itertuples():
            key = row.key.encode() if isinstance(row.key, str) else None
            send_raw(str(row.source_topic), str(row.raw).encode(), key)
        log.info("replayed dead letters n=%d topic=%s contains=%s", len(frame), topic, contains)
        return len(frame)
