"""Ship the ingress's reco log to the RecoLog deployment in batches.

Producing with kafka-python costs the calling process about 0.25 ms of CPU per record (its
accumulator in the caller's thread, its sender thread beside it), the largest single cost
of a recommendation in the ingress: over every process, 2.26-2.49 ms of CPU per request at
32 connections with the reco log produced there, 2.05-2.28 ms shipped from here (bench
cluster, the two modes alternated). So the ingress only appends each decision to a list,
and `LogShipper` hands the list to the RecoLog deployment, which produces it, once per
`interval` (one call in flight). A batch that cannot be shipped within `timeout` goes to
`fallback` record by record (the ingress's own producer, and its log; a batch that times
out and still arrives is a duplicate, which the ingest's event_id dedupe drops), and so does
a record that finds `max_buffer` queued (RecoLog stuck): nothing is dropped, and memory
stays bounded.

`RecoLogLogic` is what the RecoLog deployment does with a shipped batch (produce it) and
about once a second (push its producer's health, `ProducerGauges`, which the ingress replicas
push for their own producers too). Plain asyncio: unit-tested without Ray.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from backend.serving.metrics import MetricsPayload, replica_delta, take_replica_delta

log = logging.getLogger(__name__)
Record = dict[str, Any]
PUSH_SECONDS = 1.0  # how often a replica pushes metrics and reads the shared experiment


class Producer(Protocol):
    """What serving uses of `backend.data.kafka.EventProducer` (a fake in unit tests)."""

    @property
    def depth(self) -> int: ...

    @property
    def pending(self) -> int: ...

    @property
    def log_bytes(self) -> int: ...

    @property
    def degraded(self) -> bool: ...

    @property
    def spooled(self) -> int: ...

    def send(self, topic: str, event: Any) -> None: ...

    def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None: ...

    def write(self, topic: str, event: Any) -> Any: ...

    async def durable(self, entry: Any) -> None: ...

    def close(self, timeout: float) -> None: ...


class ProducerGauges:
    """One replica's producer health into its metric delta: events waiting for the broker,
    degraded, accepted writes not yet in the lake, the log's size, and the events that
    waited for the broker since the last push as produce errors."""

    def __init__(self, producer: Producer, replica: str) -> None:
        self.producer = producer
        self.replica = replica
        self.pushed = 0  # producer.spooled at the last push

    def push(self) -> None:
        delta, spooled = replica_delta(), self.producer.spooled
        labels = {"replica": self.replica}
        delta.set("reco_spool_depth", labels, float(self.producer.depth))
        delta.set("reco_broker_degraded", labels, float(self.producer.degraded))
        delta.set("reco_wal_pending", labels, float(self.producer.pending))
        delta.set("reco_wal_bytes", labels, float(self.producer.log_bytes))
        if spooled > self.pushed:
            delta.inc("reco_kafka_produce_errors_total", {}, spooled - self.pushed)
        self.pushed = spooled


class LogShipper:
    def __init__(self, ship: Callable[[list[Record]], Awaitable[Any]],
                 fallback: Callable[[Record], None], interval: float = 0.05,
                 max_batch: int = 1000, max_buffer: int = 50_000,
                 timeout: float = 10.0) -> None:
        self.ship = ship
        self.fallback = fallback
        self.interval = interval
        self.max_batch = max_batch
        self.max_buffer = max_buffer
        self.timeout = timeout
        self._buffer: list[Record] = []
        self._task: asyncio.Task[None] | None = None
        self.shipped = 0  # records handed over, and records that took the fallback
        self.fell_back = 0

    def add(self, record: Record) -> None:
        """Queue a record; the first call starts the shipping loop on the running loop."""
        if len(self._buffer) >= self.max_buffer:
            self._fall_back([record])
            return
        self._buffer.append(record)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        """Ship everything queued so far."""
        while self._buffer:
            batch, self._buffer = (self._buffer[:self.max_batch],
                                   self._buffer[self.max_batch:])
            try:
                await asyncio.wait_for(self.ship(batch), self.timeout)
                self.shipped += len(batch)
            except asyncio.CancelledError:
                self._fall_back(batch)
                raise
            except Exception as exc:  # the RecoLog replica away: produce here instead
                log.warning("reco log shipping failed records=%d error=%s fallback=local",
                            len(batch), type(exc).__name__)
                self._fall_back(batch)

    def _fall_back(self, batch: list[Record]) -> None:
        for record in batch:
            self.fallback(record)
        self.fell_back += len(batch)

    async def close(self) -> None:
        """Stop the loop and ship (or fall back with) what is left."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self.flush()


class RecoLogLogic:
    """The RecoLog deployment: produces the ingress replicas' reco log to events.reco, batches
    at a time, and pushes its producer's health to the shared state (`record`)."""

    TOPIC = "events.reco"

    def __init__(self, producer: Producer, replica: str,
                 record: Callable[[MetricsPayload], Awaitable[None]],
                 period: float = PUSH_SECONDS) -> None:
        self.producer = producer
        self.gauges = ProducerGauges(producer, replica)
        self.record = record
        self.period = period
        self._pusher: asyncio.Task[None] | None = None

    def write(self, records: list[Record]) -> int:
        """Records are `RecoEvent.to_record()` dicts, validated where they were made."""
        self.start()
        for record in records:
            self.producer.send(self.TOPIC, record)
        return len(records)

    def start(self) -> None:
        """Start pushing (on the running loop), once."""
        if self._pusher is None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_loop())

    async def push(self) -> None:
        """This replica's log figures and broker state, for /health and /metrics."""
        self.gauges.push()
        await self.record(take_replica_delta().as_payload())

    async def _push_loop(self) -> None:
        while True:
            try:
                await self.push()
            except Exception:  # the state replica restarting: try again next period
                log.warning("push to the serving state failed", exc_info=True)
            await asyncio.sleep(self.period)

    def close(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
            self._pusher = None
        self.producer.close(timeout=5)
