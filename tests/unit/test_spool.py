"""The producer's disk spool; the broker here is a closed port (no broker), not a mock."""

from __future__ import annotations

from backend.data.kafka import EventProducer, Spool
from tests.conftest import free_port


def test_spool_roundtrip_in_order(tmp_path):
    spool = Spool(tmp_path)
    for i in range(5):
        spool.append("events.rating", str(i).encode(), f'{{"i":{i}}}'.encode())
    assert spool.depth == 5
    spool.seal()
    spool.append("events.watch", None, b"{}")
    (seg,) = spool.segments()
    records = spool.read(seg)
    assert [k for _, k, _ in records] == [b"0", b"1", b"2", b"3", b"4"]
    spool.done(seg, len(records))
    assert spool.depth == 1
    assert Spool(tmp_path).depth == 1  # depth survives a restart


def test_torn_last_line_is_skipped(tmp_path):
    spool = Spool(tmp_path)
    spool.append("events.rating", b"1", b"{}")
    spool.seal()
    (seg,) = spool.segments()
    with open(seg, "a") as fh:
        fh.write('{"topic": "events.rating", "key": "2", "val')
    assert len(spool.read(seg)) == 1


def test_unreachable_broker_spools_everything(settings, tmp_path):
    settings.kafka.embedded_port = free_port()  # nothing listens there
    producer = EventProducer(settings.kafka, tmp_path / "spool", start_flusher=False)
    for i in range(3):
        producer.send("events.rating", {"user_id": i + 1, "event_id": str(i)})
    assert producer.degraded and producer.spool.depth == 3
    assert producer.replay() == 0 and producer.spool.depth == 3  # still no broker: kept
    producer.close(timeout=1)


def test_claim_spool_adopts_the_files_of_gone_processes_only(tmp_path):
    import fcntl
    import os

    from backend.data.kafka import claim_spool

    parent = tmp_path / "serve"
    gone, alive = parent / "gone", parent / "alive"
    for d in (gone, alive):
        d.mkdir(parents=True)
        (d / "seg-00000000000000000001.jsonl").write_text('{"topic": "t", "key": null, '
                                                          '"value": "1"}\n')
    (gone / "active.jsonl").write_text('{"topic": "t", "key": null, "value": "2"}\n')
    held = os.open(alive / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another replica, still running
    own, fd = claim_spool(parent, "me")
    try:
        assert not gone.exists() and alive.exists()
        assert Spool(own).depth == 2 and len(Spool(own).segments()) == 2
        assert Spool(alive).depth == 1
    finally:
        os.close(fd)
        os.close(held)


class _HungClient:
    """A Kafka client whose sends never complete (a frozen broker), recording callbacks."""

    def __init__(self):
        from kafka.producer.future import FutureProduceResult, FutureRecordMetadata

        self.futures = []
        self._make = lambda: FutureRecordMetadata(FutureProduceResult(None), 0, -1, None,
                                                  0, 0, -1)

    def send(self, topic, value=None, key=None):
        fut = self._make()
        self.futures.append(fut)
        return fut

    def close(self, timeout=None):
        pass  # kafka-python drops the batches of a closed client without their errbacks


def test_records_in_flight_when_the_client_is_replaced_go_to_the_spool(settings, tmp_path):
    producer = EventProducer(settings.kafka, tmp_path / "spool", start_flusher=False)
    client = producer._producer = _HungClient()
    for i in range(5):
        producer.send("events.rating", {"user_id": i + 1, "event_id": str(i)})
    client.futures[0].success(None)  # one acknowledged, four hang
    producer._drop_producer()  # what a failed replay does
    assert producer.spool.depth == 4 and producer.degraded
    client.futures[1].failure(RuntimeError("late"))  # a late outcome is not spooled again
    assert producer.spool.depth == 4
