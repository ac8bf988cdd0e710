"""Kafka I/O (kafka-python): topic creation, a producer that never loses an event, consumers.

The producer sends with acks=all keyed by user_id. When the broker is unreachable, or a send
fails, the record goes to an append-only disk spool under `var/spool/`; a background flusher
replays the spool, oldest first, once the broker answers again, and deletes a segment only
after every record in it was acknowledged. A replay can send a record twice; consumers dedupe
by `event_id`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from pydantic import BaseModel

from backend.core.settings import TOPICS, KafkaSettings

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
    """acks=all producer; raises KafkaError (NoBrokersAvailable) when no broker answers."""
    return KafkaProducer(
        **kafka.client_config(), acks="all", linger_ms=kafka.linger_ms, max_block_ms=2000,
        retries=3,
        delivery_timeout_ms=kafka.delivery_timeout_ms,
        max_request_size=max(1048576, kafka.max_message_bytes * 4),
    )


def encode(event: BaseModel | dict[str, Any]) -> bytes:
    record = event.model_dump(mode="json") if isinstance(event, BaseModel) else event
    return json.dumps(record, separators=(",", ":")).encode()


class Spool:
    """Append-only JSON-lines spool: `active.jsonl` is written, sealed `seg-*.jsonl` replayed."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.active = self.root / "active.jsonl"
        self._lock = threading.Lock()
        self._depth = sum(self._lines(p) for p in self.root.glob("*.jsonl"))

    @staticmethod
    def _lines(path: Path) -> int:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)

    @property
    def depth(self) -> int:
        return self._depth

    def append(self, topic: str, key: bytes | None, value: bytes) -> None:
        line = json.dumps({"topic": topic, "key": key.decode() if key else None,
                           "value": value.decode()}) + "\n"
        with self._lock, open(self.active, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
            self._depth += 1

    def seal(self) -> None:
        with self._lock:
            if self.active.exists() and self.active.stat().st_size:
                os.replace(self.active, self.root / f"seg-{time.time_ns():020d}.jsonl")

    def segments(self) -> list[Path]:
        return sorted(self.root.glob("seg-*.jsonl"))

    def read(self, segment: Path) -> list[tuple[str, bytes | None, bytes]]:
        out = []
        with open(segment) as fh:
            for line in fh:
                if not line.endswith("\n"):
                    continue  # torn last line of a crash mid-append: never acknowledged
                rec = json.loads(line)
                key = rec["key"].encode() if rec["key"] is not None else None
                out.append((rec["topic"], key, rec["value"].encode()))
        return out

    def done(self, segment: Path, count: int) -> None:
        segment.unlink()
        with self._lock:
            self._depth = max(0, self._depth - count)


def claim_spool(parent: Path, name: str) -> tuple[Path, int]:
    """The spool folder `parent/name` for one process among several (ingress replicas), with
    its lock held for the life of the process; sibling spools whose lock is free belong to a
    process that is gone, and their events are moved in here to be replayed.

    Returns (folder, lock fd). Segments keep their names (their order); an orphan's active
    file becomes a sealed segment."""
    import fcntl

    own = parent / name
    own.mkdir(parents=True, exist_ok=True)
    fd = os.open(own / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    for other in sorted(parent.iterdir()):
        if other == own or not other.is_dir():
            continue
        ofd = os.open(other / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(ofd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process is alive
            os.close(ofd)
            continue
        moved = 0
        for f in sorted(other.glob("*.jsonl")):
            target = f.name if f.name.startswith("seg-") else f"seg-{time.time_ns():020d}.jsonl"
            os.replace(f, own / target)
            moved += 1
        (other / ".lock").unlink(missing_ok=True)
        os.close(ofd)
        try:
            other.rmdir()
        except OSError:  # something else in there: leave it
            pass
        if moved:
            log.warning("adopted spool of a gone process from=%s files=%d", other.name, moved)
    return own, fd


class EventProducer:
    """Produce events keyed by user; spool to disk when the broker is away."""

    def __init__(self, kafka: KafkaSettings, spool_dir: Path, flush_interval: float = 1.0,
                 start_flusher: bool = True) -> None:
        self.kafka = kafka
        self.spool = Spool(spool_dir)
        self.flush_interval = flush_interval
        self._producer: KafkaProducer | None = None
        self._degraded = self.spool.depth > 0
        self.spooled = 0  # events that went to the spool instead of the broker, ever
        self._lock = threading.RLock()
        # records handed to the client and not yet acknowledged or failed: when the client
        # is replaced they are spooled (kafka-python drops a closed client's batches without
        # calling their errbacks: a frozen broker lost the writes in flight that way)
        self._pending: dict[int, tuple[str, bytes | None, bytes]] = {}
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if start_flusher:
            self._flusher = threading.Thread(target=self._flush_loop, name="spool-flusher",
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
            orphans = list(self._pending.values())
            self._pending.clear()
        for topic, key, value in orphans:  # unresolved: to the spool (a late copy that
            self._to_spool(topic, key, value, "client replaced")  # still lands is deduped)

    @property
    def degraded(self) -> bool:
        """True while events go to the spool instead of the broker."""
        return self._degraded

    # -- sending -------------------------------------------------------------------------

    def send(self, topic: str, event: BaseModel | dict[str, Any], key: str | int | None = None,
             ) -> None:
        """Hand an event to Kafka or, failing that, to the disk spool. Never raises for I/O."""
        record = event.model_dump(mode="json") if isinstance(event, BaseModel) else event
        if key is None:
            key = record.get("user_id")
        self.send_raw(topic, encode(record), None if key is None else str(key).encode())

    def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        if self._degraded or self.spool.depth:
            self.spooled += 1
            self.spool.append(topic, key, value)
            return
        producer = self._connect()
        if producer is None:
            self._to_spool(topic, key, value, "no broker")
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
        """A record's outcome: acknowledged, or failed and spooled (once either way)."""
        with self._lock:
            record = self._pending.pop(n, None)
        if record is not None and failure is not None:
            self._to_spool(*record, failure)

    def _to_spool(self, topic: str, key: bytes | None, value: bytes, why: str) -> None:
        if not self._degraded:
            log.warning("broker unavailable, spooling events reason=%s", why)
        self._degraded = True
        self.spooled += 1
        self.spool.append(topic, key, value)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for in-flight sends (acked or spooled)."""
        if self._producer is not None:
            try:
                self._producer.flush(timeout=timeout)
            except KafkaError as exc:
                log.warning("flush incomplete error=%s", type(exc).__name__)

    # -- spool replay --------------------------------------------------------------------

    def replay(self) -> int:
        """Replay sealed spool segments in order; returns records acknowledged."""
        self.spool.seal()
        sent = 0
        for segment in self.spool.segments():
            records = self.spool.read(segment)
            producer = self._connect()
            if producer is None:
                return sent
            try:
                futures = [producer.send(t, value=v, key=k) for t, k, v in records]
                producer.flush(timeout=self.kafka.delivery_timeout_ms / 1000)
                for fut in futures:
                    fut.get(timeout=0)
            except KafkaError as exc:
                log.warning("spool replay interrupted error=%s segment=%s", type(exc).__name__,
                            segment.name)
                self._drop_producer()  # reconnect from scratch next time (new broker, new ids)
                return sent
            self.spool.done(segment, len(records))
            sent += len(records)
            log.info("spool segment replayed records=%d segment=%s", len(records), segment.name)
        if self.spool.depth == 0 and self._degraded and not self.spool.active.exists():
            self._degraded = False
            log.info("broker back, spool drained")
        return sent

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval):
            if self._degraded or self.spool.depth:
                try:
                    self.replay()
                except Exception:  # keep the flusher alive whatever one replay hit
                    log.exception("spool replay failed")

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=timeout)
        self.flush(timeout=timeout)
        if self._producer is not None:
            self._producer.close(timeout=timeout)
