"""Kafka I/O (kafka-python): topic creation, a producer that never loses an event, consumers.

The producer sends with acks=all keyed by user_id, through a node-local write-ahead log
(`backend.data.wal`, under `var/wal/`): an accepted write is on disk before it is
acknowledged and stays there until the lake holds it; a record the broker could not take
waits there until it does (the log is the spool too). A replay can send a record twice;
consumers dedupe by `event_id`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from pydantic import BaseModel

from backend.core.settings import TOPICS, KafkaSettings
from backend.data.wal import Entry, State, WalFull, WriteAheadLog

log = logging.getLogger(__name__)


def ensure_topics(kafka: KafkaSettings, topics: Iterable[str] = TOPICS) -> list[str]:
    """Create missing topics (idempotent); returns the names it created."""
    admin = KafkaAdminClient(**kafka.client_config())
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        created = []
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, kafka.partitions, kafka.replication_factor)])
                created.append(topic)
            except TopicAlreadyExistsError:
                pass  # somebody else won the race: fine
        return created
    finally:
        admin.close()


def consumer(kafka: KafkaSettings, **overrides: Any) -> KafkaConsumer:
    """Group consumer with manual commits. A JoinGroup request legitimately waits up to the
    rebalance timeout (`max_poll_interval_ms`), so the request timeout must exceed it: with
    the producers' short timeout a join after a broker restart never completed."""
    cfg = kafka.client_config() | {
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "request_timeout_ms": kafka.max_poll_interval_ms + 10_000,
        "group_id": kafka.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": max(500, kafka.session_timeout_ms // 3),
        # full fetch requests: a precaution with the young embedded broker (one benchmark run
        # stalled before the join-timeout fix above, cause unproven); with a dozen
        # partitions the saving of incremental fetch sessions is negligible
        "enable_incremental_fetch_sessions": False,
    }
    return KafkaConsumer(**(cfg | overrides))


def producer(kafka: KafkaSettings) -> KafkaProducer:
    """acks=all producer; raises KafkaError (NoBrokersAvailable) when no broker answers. Its
    metadata (and the cluster id a replaced broker is noticed by) is at most 5 s old."""
    return KafkaProducer(
        **kafka.client_config(), acks="all", linger_ms=kafka.linger_ms, max_block_ms=2000,
        retries=3, metadata_max_age_ms=5000,
        delivery_timeout_ms=kafka.delivery_timeout_ms,
        max_request_size=max(1048576, kafka.max_message_bytes * 4),
    )


def encode(event: BaseModel | dict[str, Any]) -> bytes:
    record = event.model_dump(mode="json") if isinstance(event, BaseModel) else event
    return json.dumps(record, separators=(",", ":")).encode()


# The (topic, event_id) pairs the lake holds among those asked (event ids by topic, of
# events appended from the given wall-clock time on); each call may answer only what landed
# since the last one, unless told to look again from that time (`rescan`: entries were
# adopted, whose events may have landed long ago). See `backend.data.lake.LandedIds`.
Landed = Callable[[dict[str, set[str]], float, bool], set[tuple[str, str]]]


class EventProducer:
    """Produce events keyed by user through a write-ahead log (`backend.data.wal`).

    `send`: best effort; a record goes to the log (a spool entry, kept until the broker
    acknowledges it) only when the broker is away or the send fails. `write`: an accepted
    write; into the log first (`durable` waits for its fsync, shared with concurrent writes),
    then to Kafka. It leaves the log only once `landed` (the lake) holds its event_id, and
    is sent again when the broker that acknowledged it is replaced (a new cluster id: the
    embedded broker restarted, empty), when a gone replica's log is adopted, or when the
    lake still lacks it `resend_seconds` after. A background flusher does all of that and
    replays what the broker has not taken, oldest first. A record may reach Kafka twice;
    the ingest dedupes by `event_id`.
    """

    def __init__(self, kafka: KafkaSettings, log: WriteAheadLog | Path,
                 flush_interval: float = 1.0, start_flusher: bool = True,
                 landed: Landed | None = None, landed_interval: float = 2.0,
                 adopt_interval: float = 10.0) -> None:
        """`log`: this producer's write-ahead log, or a folder to claim one in (adopting
        those of gone producers there)."""
        self.kafka = kafka
        self.log = log if isinstance(log, WriteAheadLog) else WriteAheadLog.claim(
            Path(log), f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.landed = landed
        self.flush_interval = flush_interval
        self.landed_interval, self.adopt_interval = landed_interval, adopt_interval
        self._producer: KafkaProducer | None = None
        self._degraded = self.log.unsent > 0
        self.spooled = 0  # events that went to the log instead of the broker, ever
        self.lost = 0  # best-effort events refused by a full log (logged as errors)
        self._lock = threading.RLock()
        # best-effort records handed to the client and not yet acknowledged or failed: when
        # the client is replaced they go to the log (kafka-python drops a closed client's
        # batches without calling their errbacks: a frozen broker lost writes that way)
        self._pending: dict[int, tuple[str, bytes | None, bytes]] = {}
        self._seq = itertools.count()
        # bumped when the client is replaced or the broker changes: outcomes of sends made
        # before are ignored (what they carried was marked to be sent again then)
        self._gen = 0
        self._cluster_id: str | None = None
        self._rescan = True  # the lake is read from the oldest entry's time on next time
        now = time.monotonic()
        self._next_landed, self._next_adopt, self._next_expire = now, now + adopt_interval, now
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if start_flusher:
            self._flusher = threading.Thread(target=self._flush_loop, name="wal-flusher",
                                             daemon=True)
            self._flusher.start()

    # -- connection ----------------------------------------------------------------------

    def _connect(self) -> KafkaProducer | None:
        with self._lock:
            if self._producer is None:
                try:
                    self._producer = producer(self.kafka)
                except KafkaError as exc:
                    log.warning("producer connect failed error=%s", type(exc).__name__)
                    return None
            return self._producer

    def _drop_producer(self) -> None:
        with self._lock:
            if self._producer is not None:
                try:
                    self._producer.close(timeout=0)
                except KafkaError:
                    pass
                self._producer = None
            self._gen += 1
            self.log.unsend(states=(State.INFLIGHT,))  # what the closed client held
            orphans = list(self._pending.values())
            self._pending.clear()
        for topic, key, value in orphans:  # unresolved: to the log (a late copy that
            self._to_log(topic, key, value, "client replaced")  # still lands is deduped)

    @property
    def degraded(self) -> bool:
        """True while events wait in the log for the broker instead of going to it."""
        return self._degraded

    @property
    def depth(self) -> int:
        """Events waiting in the log for the broker."""
        return self.log.unsent

    @property
    def pending(self) -> int:
        """Accepted writes in the log that the lake does not hold yet."""
        return self.log.durable_pending

    @property
    def log_bytes(self) -> int:
        return self.log.size

    # -- sending -------------------------------------------------------------------------

    def send(self, topic: str, event: BaseModel | dict[str, Any], key: str | int | None = None,
             ) -> None:
        """Hand an event to Kafka or, failing that, to the log. Never raises for I/O."""
        record = event.model_dump(mode="json") if isinstance(event, BaseModel) else event
        if key is None:
            key = record.get("user_id")
        self.send_raw(topic, encode(record), None if key is None else str(key).encode())

    def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        if self._degraded or self.log.unsent:
            self._to_log(topic, key, value, None)
            return
        producer = self._connect()
        if producer is None:
            self._to_log(topic, key, value, "no broker")
            return
        n = next(self._seq)
        with self._lock:
            self._pending[n] = (topic, key, value)
        try:
            fut = producer.send(topic, value=value, key=key)
        except KafkaError as exc:
            self._settle(n, type(exc).__name__)
            return
        fut.add_callback(lambda _meta: self._settle(n))
        fut.add_errback(lambda exc: self._settle(n, type(exc).__name__))

    def _settle(self, n: int, failure: str | None = None) -> None:
        """A best-effort record's outcome: acknowledged, or failed and logged (once)."""
        with self._lock:
            record = self._pending.pop(n, None)
        if record is not None and failure is not None:
            self._to_log(*record, failure)

    def _to_log(self, topic: str, key: bytes | None, value: bytes, why: str | None) -> None:
        if why is not None:
            self._degrade(why)
        self.spooled += 1
        try:
            self.log.append(topic, key, value)
        except WalFull as exc:  # a best-effort record (reco log, replayed dead letter)
            self.lost += 1
            log.error("event dropped topic=%s reason=%s", topic, exc.detail)

    def _degrade(self, why: str) -> None:
        if not self._degraded:
            log.warning("broker unavailable, events wait in the write-ahead log reason=%s", why)
        self._degraded = True

    def write(self, topic: str, event: BaseModel | dict[str, Any],
              key: str | int | None = None) -> Entry:
        """An accepted write: in the log (await `durable(entry)` before acknowledging it),
        and on its way to Kafka unless the broker is away. Raises WalFull at the log's
        bound; needs `landed`, else nothing would ever leave the log."""
        if self.landed is None:
            raise RuntimeError("durable writes need `landed` (what the lake holds)")
        record = event.model_dump(mode="json") if isinstance(event, BaseModel) else event
        if key is None:
            key = record.get("user_id")
        kb = None if key is None else str(key).encode()
        value = encode(record)
        direct = not self._degraded and not self.log.unsent
        entry = self.log.append(topic, kb, value, event_id=str(record["event_id"]),
                                state=State.INFLIGHT if direct else State.UNSENT)
        if not direct:
            self.spooled += 1
            return entry
        producer = self._connect()
        if producer is None:
            self._outcome(entry, self._gen, "no broker")
            return entry
        gen = self._gen
        try:
            fut = producer.send(topic, value=value, key=kb)
        except KafkaError as exc:
            self._outcome(entry, gen, type(exc).__name__)
            return entry
        fut.add_callback(lambda _meta: self._outcome(entry, gen, None, _cluster(producer)))
        fut.add_errback(lambda exc: self._outcome(entry, gen, type(exc).__name__))
        return entry

    async def durable(self, entry: Entry) -> None:
        """Return once `entry` is on disk (group commit: one fsync for everyone waiting)."""
        await self.log.durable(entry.seq)

    def _outcome(self, entry: Entry, gen: int, failure: str | None = None,
                 cluster: str | None = None) -> None:
        """A durable entry's send: acknowledged by broker `cluster` (it now waits for the
        lake), or failed (it waits in the log for the broker). Ignored if the client or
        broker changed since."""
        with self._lock:
            if gen != self._gen:
                return
            if failure is None:
                self.log.mark([entry], State.SENT, acked_by=cluster)
                return
            self.log.mark([entry], State.UNSENT)
            self.spooled += 1
            self._degrade(failure)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for in-flight sends (acknowledged or in the log)."""
        if self._producer is not None:
            try:
                self._producer.flush(timeout=timeout)
            except KafkaError as exc:
                log.warning("flush incomplete error=%s", type(exc).__name__)

    # -- the flusher ---------------------------------------------------------------------

    def tick(self) -> None:
        """One round of the flusher: adopt gone producers' logs, notice a replaced broker,
        drop what the lake landed, and replay what waits for the broker."""
        now = time.monotonic()
        force = False
        if now >= self._next_adopt:
            self._next_adopt = now + self.adopt_interval
            force = self._rescan = self.log.adopt() > 0 or self._rescan
        force = self._watch_cluster() or force
        if self.landed is not None and self.log.durable_pending and (
                force or now >= self._next_landed):
            self._next_landed = now + self.landed_interval
            wanted, since = self.log.waiting()
            if since is not None:
                try:
                    landed = self.landed(wanted, since, self._rescan)
                    self._rescan = False
                except Exception:  # the lake unreachable: keep everything, try again later
                    log.warning("reading what the lake landed failed", exc_info=True)
                else:
                    n = self.log.landed(landed)
                    log.debug("lake read landed=%d left_log=%d pending=%d unsent=%d",
                              len(landed), n, self.log.durable_pending, self.log.unsent)
            if now >= self._next_expire:
                self._next_expire = now + 10
                if n := self.log.expire():
                    log.warning("accepted writes not in the lake in time, resending entries=%d",
                                n)
        if self._degraded or self.log.unsent:
            self.replay()

    def _watch_cluster(self) -> bool:
        """True if the broker answering is not the one before (its cluster id changed: the
        embedded broker restarted, empty): every durable entry another broker acknowledged,
        or in flight then, is sent again unless the lake holds it."""
        client = self._producer
        cluster = _cluster(client) if client is not None else None
        if not cluster:
            return False
        with self._lock:
            previous = self._cluster_id
            if previous == cluster:
                return False
            self._cluster_id = cluster
            if previous is not None:
                self._gen += 1  # outcomes of sends in flight now no longer count
            n = self.log.unsend_unless(cluster, inflight=previous is not None)
        if previous is None and not n:
            return False
        log.warning("broker changed cluster_id=%s previous=%s; resending what the lake does "
                    "not hold entries=%d", cluster, previous, n)
        return True

    def replay(self) -> int:
        """Send what waits in the log, oldest first; returns records acknowledged."""
        sent = 0
        while entries := self.log.take_unsent(500):
            producer = self._connect()
            if producer is None:
                self.log.mark(entries, State.UNSENT)
                return sent
            try:
                records = self.log.read(entries)
                futures = [producer.send(r.topic, value=r.value, key=r.key) for r in records]
                producer.flush(timeout=self.kafka.delivery_timeout_ms / 1000)
                for fut in futures:
                    fut.get(timeout=0)
            except KafkaError as exc:
                log.warning("replay interrupted error=%s", type(exc).__name__)
                self._drop_producer()  # reconnect from scratch next time (new broker, new ids)
                return sent
            self.log.mark(entries, State.SENT, acked_by=_cluster(producer))
            sent += len(entries)
            log.info("write-ahead log replayed records=%d", len(entries))
        if self._degraded and not self.log.unsent:
            self._degraded = False
            log.info("broker back, write-ahead log replayed")
        return sent

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval):
            try:
                self.tick()
            except Exception:  # keep the flusher alive whatever one round hit
                log.exception("write-ahead log round failed")

    def close(self, timeout: float = 10.0) -> None:
        """Stop the flusher, wait for sends, release the log (what it holds stays on disk
        for the next owner)."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=timeout)
        self.flush(timeout=timeout)
        if self._producer is not None:
            self._producer.close(timeout=timeout)
        self.log.close()


def _cluster(client: KafkaProducer) -> str | None:
    """The cluster id in the client's metadata (kafka-python keeps it there; the embedded
    broker gets a new one at every start)."""
    cluster = getattr(getattr(client, "_metadata", None), "cluster_id", None)
    return cluster if isinstance(cluster, str) and cluster else None
