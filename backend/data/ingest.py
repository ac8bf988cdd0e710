"""Ingest logic, free of Ray: Kafka micro-batch -> validate -> DLQ | dedupe -> lake -> commit.

Order per poll, which is what makes a crash at any point lose nothing and duplicate nothing:
1. validate each topic's batch with pandera; refused records are produced to `events.dlq`
   (with reason, source partition and offset) and acknowledged;
2. valid rows whose `event_id` the lake already holds (or that repeat within the batch) are
   dropped; the rest are written to the lake durably (temp file, fsync, rename);
3. only then are the offsets committed.
A crash before 3 replays the batch from the last commit; step 2 then finds every row already
in the lake. The dedupe memory is loaded from the lake at start (last `dedupe_days`).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition

from backend.core.failpoints import failpoint
from backend.core.settings import TOPICS, Settings
from backend.data import batch
from backend.data.catalog import load_catalog
from backend.data.course import CourseTopic, LineFormatError
from backend.data.events import EVENT_NAMESPACE, DlqEvent
from backend.data.kafka import consumer as make_consumer
from backend.data.kafka import encode
from backend.data.kafka import producer as make_producer
from backend.data.lake import Lake

log = logging.getLogger(__name__)

DLQ = "events.dlq"


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    origin: Message | None = None  # the course line this event was translated from


@dataclass
class IngestStats:
    consumed: Counter = field(default_factory=Counter)
    valid: Counter = field(default_factory=Counter)
    invalid: Counter = field(default_factory=Counter)
    deduplicated: Counter = field(default_factory=Counter)
    written: Counter = field(default_factory=Counter)
    batches: int = 0
    batch_seconds: float = 0.0

    def merge(self, other: IngestStats) -> None:
        for k, v in other.__dict__.items():
            if isinstance(v, Counter):
                getattr(self, k).update(v)
        self.batches += other.batches
        self.batch_seconds += other.batch_seconds

    def as_dict(self) -> dict[str, object]:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in self.__dict__.items()}


def dlq_event(msg: Message, reason: str) -> DlqEvent:
    raw = (msg.value or b"")[:8192].decode("utf-8", errors="replace")[:8192]
    digest = hashlib.sha256(msg.value or b"").hexdigest()
    return DlqEvent(
        event_id=str(uuid.uuid5(EVENT_NAMESPACE,
                                f"{msg.topic}/{msg.partition}/{msg.offset}/{digest}")),
        source_topic=msg.topic, partition=msg.partition, offset=msg.offset,
        key=(msg.key or b"").decode("utf-8", errors="replace")[:256] or None,
        raw=raw, error=reason[:4096],
    )


class IngestLogic:
    """Turns polled messages into lake files and DLQ records; knows nothing of Kafka clients."""

    def __init__(self, lake: Lake, max_bytes: int, dedupe_days: int,
                 send_dlq: Callable[[list[DlqEvent]], None], tag: str = "",
                 per_message: bool = False, course: CourseTopic | None = None) -> None:
        self.lake = lake
        self.course = course
        self.max_bytes = max_bytes
        self.send_dlq = send_dlq
        self.tag = tag
        self.per_message = per_message
        self.dedupe_days = dedupe_days
        self.seen: dict[str, set[str]] = {t: set() for t in TOPICS}
        self._read: dict[str, set] = {t: set() for t in TOPICS}
        self.refresh()
        self.stats = IngestStats()
        self.on_batch: Callable[[IngestStats], None] | None = None

    def refresh(self) -> None:
        """Load ids from lake files this process has not read: at start and after every
        partition assignment, so a partition taken over from a crashed member dedupes against
        what that member wrote before it died."""
        for t in TOPICS:
            ids, files = self.lake.event_ids(t, self.dedupe_days, skip=self._read[t])
            self.seen[t] |= ids
            self._read[t] |= files

    def handle(self, messages: list[Message]) -> None:
        """Validate, route and durably land one poll's messages (all topics)."""
        start = time.perf_counter()
        delta = IngestStats()
        dlq: list[DlqEvent] = []
        if self.course is not None:
            messages = self._translate(messages, dlq, delta)
        by_topic: dict[str, list[Message]] = {}
        for m in messages:
            by_topic.setdefault(m.topic, []).append(m)
        landed: list[tuple[str, pd.DataFrame]] = []
        for topic, msgs in by_topic.items():
            delta.consumed[topic] += len(msgs)
            result = self._validate(topic, msgs)
            for rej in result.rejected:
                if topic == DLQ:  # cannot dead-letter the dead letters: log them loudly
                    log.error("invalid DLQ record dropped offset=%s reason=%s",
                              msgs[rej.index].offset, rej.reason)
                else:  # a translated course line is dead-lettered as the line it was
                    m = msgs[rej.index]
                    dlq.append(dlq_event(m.origin or m, rej.reason))
            delta.invalid[topic] += len(result.rejected)
            delta.valid[topic] += len(result.valid)
            frame = self._dedupe(topic, result.valid, delta)
            if len(frame):
                pos = frame.pop("_pos").to_numpy()
                frame["kafka_partition"] = [msgs[i].partition for i in pos]
                frame["kafka_offset"] = [msgs[i].offset for i in pos]
                landed.append((topic, frame))
        if dlq:
            self.send_dlq(dlq)  # acknowledged before the offsets move past the bad records
        for topic, frame in landed:
            self.lake.write(topic, frame, tag=self.tag)
            self.seen[topic].update(frame["event_id"])
            delta.written[topic] += len(frame)
        delta.batches += 1
        delta.batch_seconds += time.perf_counter() - start
        self.stats.merge(delta)
        if self.on_batch is not None:
            self.on_batch(delta)

    def _translate(self, messages: list[Message], dlq: list[DlqEvent],
                   delta: IngestStats) -> list[Message]:
        """Course lines as the events they name (rows keep the line's partition and offset);
        a line that is not one, or names an unknown movie, goes to `dlq` with the reason."""
        assert self.course is not None
        out = []
        for m in messages:
            if m.topic != self.course.name:
                out.append(m)
                continue
            delta.consumed[m.topic] += 1
            try:
                topic, value = self.course.translate(m.value)
            except LineFormatError as exc:
                dlq.append(dlq_event(m, str(exc)))
                delta.invalid[m.topic] += 1
                continue
            out.append(Message(topic, m.partition, m.offset, m.key, value, origin=m))
        return out

    def _validate(self, topic: str, msgs: list[Message]) -> batch.BatchResult:
        values = [m.value for m in msgs]
        if not self.per_message:
            return batch.process(topic, values, self.max_bytes)
        parts = [batch.process(topic, [v], self.max_bytes) for v in values]
        valid = [p.valid.assign(_pos=i) for i, p in enumerate(parts) if len(p.valid)]
        return batch.BatchResult(
            valid=pd.concat(valid, ignore_index=True) if valid else parts[0].valid,
            rejected=[batch.Rejected(i, r.reason) for i, p in enumerate(parts)
                      for r in p.rejected],
        )

    def _dedupe(self, topic: str, valid: pd.DataFrame, delta: IngestStats) -> pd.DataFrame:
        if valid.empty:
            return valid
        seen, ids = self.seen[topic], valid["event_id"]
        # set lookups per row: `isin(seen)` would copy the whole memory (every id landed in
        # `dedupe_days`, hundreds of thousands) into a hash table on every batch
        fresh = (np.fromiter((i not in seen for i in ids), bool, len(ids))
                 & ~ids.duplicated().to_numpy())
        delta.deduplicated[topic] += int((~fresh).sum())
        return valid[fresh].copy()


class _OnAssign(ConsumerRebalanceListener):
    def __init__(self, worker: PartitionWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked) -> None:
        pass

    def on_partitions_assigned(self, assigned) -> None:
        self.worker.active_at = time.monotonic()  # new partitions: not drained until polled
        self.worker.logic.refresh()
        if assigned and time.monotonic() < self.worker.rewind_until:
            # a new (empty, restarted) broker: its offsets restart at 0 and any offset
            # committed before we noticed may have skipped records; read it all again,
            # the dedupe makes that safe
            consumer = self.worker._consumer
            assert consumer is not None  # `assigned` came from it
            consumer.seek_to_beginning(*assigned)


class PartitionWorker:
    """One member of the ingest consumer group: poll, hand to IngestLogic, commit.

    Subscribed (the group assigns partitions, rebalancing when a member comes or goes), or,
    with `members` (a drain, `ingest --once`), assigned a fixed share of the partitions by
    `worker_id` and committing to the group's offsets without joining it. A drain never
    waits on a group join: the embedded broker keeps members that left together (a job's
    actors stopping) in the group, and the next job's join waits past its rebalance timeout
    for them; a join that times out is resent as another member, and the group never
    forms (docs/architecture.md, "The drain")."""

    def __init__(self, settings: Settings, worker_id: int = 0,
                 members: int | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.members = members
        self._producer: KafkaProducer | None = None
        name = settings.ingest.course_topic
        course = CourseTopic(name, lambda: load_catalog(settings)) if name else None
        self.topics = (*TOPICS, name) if name else TOPICS
        self.logic = IngestLogic(Lake.open(settings), settings.kafka.max_message_bytes,
                                 settings.lake.dedupe_days, self._send_dlq, tag=f"w{worker_id}-",
                                 per_message=settings.ingest.per_message_validation,
                                 course=course)
        self._consumer: KafkaConsumer | None = None
        self._cluster_id: str | None = None
        self.rewind_until = 0.0  # monotonic deadline for rewinding assigned partitions
        self.active_at = time.monotonic()  # last records handled or assignment received
        self._assigned: frozenset[str] = frozenset()
        self._known: frozenset[str] = frozenset()
        self._failing = False

    def _send_dlq(self, events: list[DlqEvent]) -> None:
        if self._producer is None:  # raises while the broker is away: the batch is retried
            self._producer = make_producer(self.settings.kafka)
        producer = self._producer
        futures = [producer.send(DLQ, value=encode(e), key=(e.key or "").encode() or None)
                   for e in events]
        producer.flush(timeout=self.settings.kafka.delivery_timeout_ms / 1000)
        for f in futures:
            f.get(timeout=0)  # raises if any DLQ record was not acknowledged

    def _open(self) -> KafkaConsumer:
        c = make_consumer(self.settings.kafka, max_poll_records=self.settings.ingest.max_batch,
                          metadata_max_age_ms=5000,  # notice a restarted broker within seconds
                          # a trickle gathers in the broker for up to batch_seconds (a full
                          # megabyte returns at once): one lake file per topic and member
                          # every few seconds instead of one per poll
                          fetch_min_bytes=1 << 20,
                          fetch_max_wait_ms=int(self.settings.ingest.batch_seconds * 1000),
                          fetch_max_bytes=16 * 1024 * 1024,
                          max_partition_fetch_bytes=4 * 1024 * 1024)
        if self.members is None:
            c.subscribe(list(self.topics), listener=_OnAssign(self))
        else:
            self._assign_share(c)
        return c

    def _assign_share(self, c: KafkaConsumer) -> None:
        """Take this worker's share of every partition the metadata lists (again when it
        lists more): the i-th partition, in topic and number order, goes to worker i mod n."""
        assert self.members is not None
        every = [TopicPartition(t, p) for t in sorted(self.topics)
                 for p in sorted(c.partitions_for_topic(t) or ())]
        share = set(every[self.worker_id::self.members])
        if share != c.assignment():
            c.assign(sorted(share))
            self.active_at = time.monotonic()  # new partitions: not drained until polled

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception:  # closing a consumer of a dead broker may fail; it is gone anyway
                log.debug("consumer close failed", exc_info=True)
        self._consumer = None

    def poll_once(self) -> int:
        """One poll-handle-commit cycle; returns the number of messages handled."""
        if self._consumer is None:
            self._consumer = self._open()
        c = self._consumer
        polled = c.poll(timeout_ms=self.settings.ingest.poll_timeout_ms,
                        max_records=self.settings.ingest.max_batch)
        cluster_id = getattr(c._client.cluster, "cluster_id", None)
        if self._cluster_id is not None and cluster_id and cluster_id != self._cluster_id:
            # A different broker (the embedded one restarted empty): its offsets restart at 0,
            # so our positions mean nothing there. Drop this poll and read everything again
            # (the dedupe makes that safe); the client rejoins the group by itself, and the
            # assignment listener rewinds whatever it is given during the next two minutes.
            # Closing and recreating the consumer instead leaves stale members that the new
            # coordinator waits for, and the group never forms.
            log.warning("broker changed cluster_id=%s previous=%s; rewinding", cluster_id,
                        self._cluster_id)
            self._cluster_id = cluster_id
            self.rewind_until = time.monotonic() + 120
            if c.assignment():
                c.seek_to_beginning(*c.assignment())
            return 0
        self._cluster_id = cluster_id or self._cluster_id
        if not polled:
            return 0
        messages = [Message(tp.topic, tp.partition, r.offset, r.key, r.value)
                    for tp, records in polled.items() for r in records]
        try:
            self.logic.handle(messages)
        except Exception:
            log.exception("batch failed; it will be polled again worker=%s", self.worker_id)
            for tp, records in polled.items():  # nothing of it was committed: go back
                c.seek(tp, records[0].offset)
            raise
        failpoint("ingest.after_write")
        offsets = {TopicPartition(tp.topic, tp.partition):
                   OffsetAndMetadata(records[-1].offset + 1, "", -1)
                   for tp, records in polled.items()}
        c.commit(offsets)
        return len(messages)

    def assigned(self) -> bool:
        return bool(self._assigned)

    def progress(self) -> dict:
        """What a drain check needs: partitions held, partitions that exist, seconds idle.

        Read from another thread; the poll loop refreshes the fields after every cycle."""
        return {"assigned": sorted(self._assigned), "known": sorted(self._known),
                "idle": time.monotonic() - self.active_at, "failing": self._failing}

    def _observe(self) -> None:
        c = self._consumer
        if c is None:
            self._assigned = frozenset()
            return
        if self.members is not None:
            self._assign_share(c)
        if not c._subscription.has_all_fetch_positions():
            # not idle while it does not know where each partition resumes: a restarted
            # member's first polls wait for the coordinator's committed offsets
            self.active_at = time.monotonic()
        self._assigned = frozenset(f"{tp.topic}:{tp.partition}" for tp in c.assignment())
        cluster = c._client.cluster
        self._known = frozenset(f"{t}:{p}" for t in self.topics
                                for p in (cluster.partitions_for_topic(t) or ()))

    def run(self, stop: Callable[[], bool] = lambda: False) -> dict:
        """Consume until `stop()`; returns the stats."""
        while not stop():
            try:
                if self.poll_once():
                    self.active_at = time.monotonic()
                self._failing = False
            except Exception as exc:  # broker away, commit refused: back off and retry; the
                # client rejoins by itself (a fresh consumer would leave a stale group member)
                log.warning("ingest cycle failed worker=%s error=%s", self.worker_id, exc)
                self._failing = True
                time.sleep(1.0)
            self._observe()
        self._close()
        if self._producer is not None:
            self._producer.close(timeout=5)
        return self.logic.stats.as_dict()
