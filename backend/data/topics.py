"""Looking into topics with kafka-python (`reco topics`): what each holds and its records.

Counts and positions never come from the broker's end offsets: the embedded broker's
high-watermark is wrong for multi-record batches. A count reads the partition from its
first record until a poll comes back empty; following from now filters the records of the
last batch by their timestamp.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from pydantic import BaseModel

from backend.core.settings import KafkaSettings


class PartitionInfo(BaseModel):
    partition: int
    leader: int
    replicas: list[int]
    in_sync: list[int]
    committed: int | None  # the ingest group's next offset (None: nothing committed)
    records: int | None = None  # counted by reading (None: not counted)


class TopicInfo(BaseModel):
    topic: str
    partitions: list[PartitionInfo]


class Record(BaseModel):
    partition: int
    offset: int
    ts: datetime
    key: str | None
    value: str

    def line(self) -> str:
        ts = self.ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return f"{self.partition}:{self.offset} {ts} key={self.key or '-'} {self.value}"


def _reader(kafka: KafkaSettings) -> KafkaConsumer:
    return KafkaConsumer(**kafka.client_config(), group_id=None, enable_auto_commit=False)


def _count(kafka: KafkaSettings, parts: list[TopicPartition]) -> dict[int, int]:
    """Records per partition, read from the first until three polls come back empty."""
    c = _reader(kafka)
    try:
        c.assign(parts)
        c.seek_to_beginning(*parts)
        counts = {tp.partition: 0 for tp in parts}
        empty = 0
        while empty < 3:
            polled = c.poll(timeout_ms=1000, max_records=10_000)
            empty = 0 if polled else empty + 1
            for tp, records in polled.items():
                counts[tp.partition] += len(records)
        return counts
    finally:
        c.close()


def describe(kafka: KafkaSettings, topics: list[str] | None = None,
             count: bool = False) -> list[TopicInfo]:
    """Every topic (or `topics`): partitions, leader, replicas, the ingest group's committed
    offsets, and with `count` the records each partition holds."""
    admin = KafkaAdminClient(**kafka.client_config())
    try:
        names = sorted(topics or [t for t in admin.list_topics() if not t.startswith("__")])
        group = admin.list_group_offsets(kafka.consumer_group).get(kafka.consumer_group, {})
        committed = {(tp.topic, tp.partition): o.offset for tp, o in group.items()
                     if o.offset >= 0}
        described = {d["name"]: d for d in admin.describe_topics(names)}
    finally:
        admin.close()
    out = []
    for name in names:
        d = described.get(name)
        if d is None or d["error_code"]:
            raise LookupError(f"no topic {name!r} on {kafka.servers}")
        parts = sorted(d["partitions"], key=lambda p: p["partition_index"])
        counts = (_count(kafka, [TopicPartition(name, p["partition_index"]) for p in parts])
                  if count else {})
        out.append(TopicInfo(topic=name, partitions=[PartitionInfo(
            partition=p["partition_index"], leader=p["leader_id"], replicas=p["replica_nodes"],
            in_sync=p["isr_nodes"], committed=committed.get((name, p["partition_index"])),
            records=counts.get(p["partition_index"])) for p in parts]))
    return out


def tail(kafka: KafkaSettings, topic: str, from_beginning: bool = False,
         limit: int | None = None, idle_seconds: float | None = None) -> Iterator[Record]:
    """The topic's records, from its first or from now on, until `limit` records or
    `idle_seconds` without one (both None: until interrupted)."""
    c = _reader(kafka)
    try:
        numbers = c.partitions_for_topic(topic)
        if not numbers:
            raise LookupError(f"no topic {topic!r} on {kafka.servers}")
        parts = [TopicPartition(topic, p) for p in sorted(numbers)]
        c.assign(parts)
        since = 0
        if from_beginning:
            c.seek_to_beginning(*parts)
        else:  # the end the broker reports may be its last batch's start: filter by time
            since = int(time.time() * 1000)
            c.seek_to_end(*parts)
        shown, quiet = 0, time.monotonic()
        while limit is None or shown < limit:
            polled = c.poll(timeout_ms=500)
            if not polled and idle_seconds is not None and \
                    time.monotonic() - quiet >= idle_seconds:
                return
            for records in polled.values():
                for r in records:
                    if r.timestamp < since:
                        continue
                    quiet = time.monotonic()
                    yield Record(partition=r.partition, offset=r.offset,
                                 ts=datetime.fromtimestamp(r.timestamp / 1000, UTC),
                                 key=r.key.decode("utf-8", "replace") if r.key else None,
                                 value=(r.value or b"").decode("utf-8", "replace"))
                    shown += 1
                    if limit is not None and shown >= limit:
                        return
    finally:
        c.close()
