"""The write-ahead log (backend/data/wal.py) and the producer that drives it. Real files and
fsyncs; the broker is a closed port or, where outcomes must be steered, a fake client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from backend.data import wal as walmod
from backend.data.kafka import EventProducer
from backend.data.wal import State, WalBusy, WalFull, WriteAheadLog, read_segment
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def rating(i: int) -> dict:
    return {"event_id": str(uuid.uuid4()), "ts": "2024-01-01T00:00:00Z", "user_id": i + 1,
            "item_id": 2, "rating": 3}


def value(rec: dict) -> bytes:
    return json.dumps(rec).encode()


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.wal"))


# -- the log ---------------------------------------------------------------------------------

def test_records_read_back_in_order_and_survive_a_reopen(tmp_path):
    w = WriteAheadLog(tmp_path / "log")
    recs = [rating(i) for i in range(5)]
    entries = [w.append("events.rating", str(i).encode(), value(r), r["event_id"])
               for i, r in enumerate(recs)]
    entries.append(w.append("events.reco", None, b"{}"))  # a spool entry: no event id
    w.sync()
    back = w.read(entries)
    assert [r.value for r in back[:5]] == [value(r) for r in recs]
    assert [r.key for r in back] == [b"0", b"1", b"2", b"3", b"4", None]
    assert (back[0].topic, back[0].event_id, back[5].event_id) == (
        "events.rating", recs[0]["event_id"], None)
    w.close()
    again = WriteAheadLog(tmp_path / "log")  # the next owner finds them all, to send
    assert again.pending == 6 and again.unsent == 6 and again.durable_pending == 5
    again.close()


def test_a_torn_last_record_is_ignored(tmp_path):
    """A crash mid-write leaves part of a record (never fsynced, so never acknowledged):
    reading stops there; the whole records before it are kept."""
    w = WriteAheadLog(tmp_path / "log")
    for i in range(3):
        r = rating(i)
        w.append("events.rating", None, value(r), r["event_id"])
    w.sync()
    w.close()
    (seg,) = segments(tmp_path / "log")
    whole = seg.read_bytes()
    torn = walmod.encode("events.rating", None, value(rating(9)), "x", 0.0)
    seg.write_bytes(whole + torn[:len(torn) - 7])  # the tail of the 4th record never written
    assert len(read_segment(seg)) == 3
    w = WriteAheadLog(tmp_path / "log")
    assert w.pending == 3
    w.close()
    flipped = bytearray(whole + torn)
    flipped[-3] ^= 0xFF  # all bytes there, but not the ones written: the checksum says so
    seg.write_bytes(bytes(flipped))
    assert len(read_segment(seg)) == 3
    seg.write_bytes(whole + b"\0" * 64)  # zeros past the end (a preallocated tail)
    assert len(read_segment(seg)) == 3


def test_concurrent_writers_share_fsyncs_and_none_returns_before_its_own(tmp_path, monkeypatch):
    """Group commit: 60 requests awaiting durability at once cost a few fsyncs, not 60, and
    each returns only after an fsync that began after its record was written."""
    calls: list[int] = []
    synced_up_to = [0]
    real = os.fdatasync
    w = WriteAheadLog(tmp_path / "log")

    def slow_fdatasync(fd: int) -> None:
        target = w._sync.written  # what this fsync covers at least (read before it runs)
        time.sleep(0.02)
        real(fd)
        calls.append(target)
        synced_up_to[0] = max(synced_up_to[0], target)

    monkeypatch.setattr(walmod.os, "fdatasync", slow_fdatasync)

    async def request(i: int) -> None:
        await asyncio.sleep(0.001 * (i % 7))
        r = rating(i)
        entry = w.append("events.rating", None, value(r), r["event_id"])
        await w.durable(entry.seq)
        assert synced_up_to[0] >= entry.seq  # on disk before the answer

    async def scenario() -> None:
        await asyncio.gather(*(request(i) for i in range(60)))

    asyncio.run(scenario())
    assert 1 <= len(calls) <= 10, calls
    assert w._sync.synced == 60
    # blocking callers (threads) share fsyncs the same way
    calls.clear()
    threads = [threading.Thread(target=lambda i=i: w.sync(w.append(
        "events.rating", None, b"{}", f"t{i}").seq)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= len(calls) <= 6, calls
    w.close()


def test_a_full_log_refuses_with_503_and_takes_writes_again_once_the_lake_has_them(tmp_path):
    record = len(walmod.encode("events.rating", b"1", value(rating(0)), str(uuid.uuid4()),
                               time.time()))
    w = WriteAheadLog(tmp_path / "log", max_bytes=10 * record, segment_bytes=2 * record)
    accepted = []
    with pytest.raises(WalFull) as refused:
        for _ in range(100):
            r = rating(0)  # every record the same size
            w.append("events.rating", b"1", value(r), r["event_id"])
            accepted.append(r["event_id"])
    assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "5"
    assert len(accepted) == 10 and w.size <= 10 * record
    assert w.pending == 10  # every accepted one kept: refused, never dropped
    assert w.landed([("events.rating", i) for i in accepted[:4]]) == 4
    assert len(segments(tmp_path / "log")) == 3  # two sealed segments went with them
    r = rating(11)
    w.append("events.rating", b"1", value(r), r["event_id"])  # room again
    w.close()


def test_a_failed_fsync_refuses_the_waiting_write_and_every_later_one(tmp_path, monkeypatch):
    """After an fsync error nothing written since is known to be on disk (the kernel may
    have dropped the pages): the write waiting is refused, and so is every later one."""
    w = WriteAheadLog(tmp_path / "log")

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(walmod.os, "fdatasync", broken)
    r = rating(0)
    entry = w.append("events.rating", None, value(r), r["event_id"])
    with pytest.raises(WalFull) as refused:
        asyncio.run(w.durable(entry.seq))
    assert refused.value.status_code == 503 and "Input/output error" in refused.value.detail
    with pytest.raises(WalFull):
        w.append("events.rating", None, value(r), r["event_id"])
    monkeypatch.undo()
    w.close()


def test_entries_leave_the_log_only_once_done(tmp_path):
    """A durable entry leaves once the lake holds it (acknowledged is not enough); a spool
    entry once the broker acknowledged it. Sealed segments of done entries are deleted;
    an id the lake holds for another topic does not count."""
    w = WriteAheadLog(tmp_path / "log", segment_bytes=1)  # one record per segment
    recs = [rating(i) for i in range(3)]
    durable = [w.append("events.rating", None, value(r), r["event_id"]) for r in recs]
    spool = w.append("events.reco", None, b"{}")
    w.mark(durable + [spool], State.SENT)
    assert w.pending == 3 and w.durable_pending == 3 and w.unsent == 0
    assert w.landed([("events.watch", recs[0]["event_id"])]) == 0  # other topic
    assert w.landed([("events.rating", recs[0]["event_id"]),
                     ("events.rating", recs[2]["event_id"])]) == 2
    assert w.pending == 1 and w.waiting()[0] == {"events.rating": {recs[1]["event_id"]}}
    assert len(segments(tmp_path / "log")) == 2  # the 2nd record's, and the active one
    w.close()


def test_an_acknowledged_entry_the_lake_lacks_is_resent_later_and_later(tmp_path):
    w = WriteAheadLog(tmp_path / "log", resend_seconds=0.05)
    r = rating(0)
    e = w.append("events.rating", None, value(r), r["event_id"], state=State.INFLIGHT)
    w.mark([e], State.SENT)
    assert w.expire() == 0
    time.sleep(0.06)
    assert w.expire() == 1 and w.unsent == 1 and e.tries == 1
    assert w.take_unsent() == [e] and e.state is State.INFLIGHT
    w.mark([e], State.SENT)
    time.sleep(0.06)
    assert w.expire() == 0  # twice as long now
    time.sleep(0.05)
    assert w.expire() == 1
    w.close()


def test_a_folder_is_owned_by_one_live_process(tmp_path):
    w = WriteAheadLog(tmp_path / "log")
    with pytest.raises(WalBusy):
        WriteAheadLog(tmp_path / "log")
    w.close()
    WriteAheadLog(tmp_path / "log").close()


KILLED_WRITER = """
import json, os, sys, uuid
from backend.data.wal import WriteAheadLog
w = WriteAheadLog.claim(sys.argv[1], "killed")
ids = []
for i in range(int(sys.argv[2])):
    eid = str(uuid.uuid4())
    w.sync(w.append("events.rating", b"7", json.dumps({"event_id": eid}).encode(), eid).seq)
    ids.append(eid)
print(json.dumps(ids), flush=True)
os.write(w._fd, b"\\x40\\x00\\x00\\x00torn")  # a record it was writing when it died
os.kill(os.getpid(), 9)
"""


def test_the_log_of_a_killed_owner_is_adopted_and_a_live_ones_is_not(tmp_path):
    parent = tmp_path / "ingress"
    out = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(parent), "5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == -9, out.stderr
    ids = json.loads(out.stdout)
    alive = WriteAheadLog.claim(parent, "alive")  # another replica, running
    r = rating(1)
    alive.append("events.rating", None, value(r), r["event_id"])
    alive.sync()
    assert alive.pending == 6  # it adopted the killed one's 5 (the torn record ignored)
    me = WriteAheadLog.claim(parent, "me")
    assert me.pending == 0 and (parent / "alive").exists()  # a live owner's log stays
    assert not (parent / "killed").exists()
    alive.close()  # its owner gone (closed): adopted on the next look
    assert me.adopt() == 6 and not (parent / "alive").exists()
    taken = me.take_unsent()
    assert {e.event_id for e in taken} == set(ids) | {r["event_id"]}
    assert [x.value for x in me.read(taken)][:5] == [
        json.dumps({"event_id": i}).encode() for i in ids]
    me.close()


# -- the producer over it ------------------------------------------------------------------

@pytest.fixture
def settings(settings):
    """No broker listens at its port: whatever is not steered by a fake client fails to
    connect (never reaching a broker another suite on this machine runs)."""
    settings.kafka.embedded_port = free_port()
    settings.kafka.bootstrap_timeout_ms = 500
    return settings


def test_writes_wait_in_the_log_while_no_broker_answers(settings, tmp_path):
    producer = EventProducer(settings.kafka, tmp_path / "wal", start_flusher=False,
                             landed=lambda wanted, since, rescan: set())
    for i in range(3):
        producer.write("events.rating", rating(i))
    producer.send("events.reco", {"user_id": 1, "event_id": "r"})
    assert producer.degraded and producer.depth == 4 and producer.pending == 3
    assert producer.replay() == 0 and producer.depth == 4  # still no broker: kept
    producer.close(timeout=1)
    assert len(segments(next((tmp_path / "wal").iterdir()))) == 1  # on disk for an adopter


class FakeClient:
    """A kafka-python producer whose outcomes the test decides; `cluster` is the cluster id
    its metadata reports."""

    def __init__(self, cluster: str = "c1") -> None:
        from kafka.producer.future import FutureProduceResult, FutureRecordMetadata

        self.sent: list[tuple[str, bytes]] = []
        self.futures: list = []
        self._metadata = type("Metadata", (), {"cluster_id": cluster})()
        self._make = lambda: FutureRecordMetadata(FutureProduceResult(None), 0, -1, None,
                                                  0, 0, -1)
        self.ack_at_flush = False

    def send(self, topic, value=None, key=None):
        fut = self._make()
        self.sent.append((topic, value))
        self.futures.append(fut)
        return fut

    def flush(self, timeout=None):
        if self.ack_at_flush:
            for f in self.futures:
                if not f.is_done:
                    f.success(None)

    def close(self, timeout=None):
        pass  # kafka-python drops the batches of a closed client without their errbacks


def test_a_replaced_broker_gets_what_the_lake_does_not_hold_and_only_that(settings, tmp_path):
    lake: set[tuple[str, str]] = set()
    producer = EventProducer(settings.kafka, tmp_path / "wal", start_flusher=False,
                             landed=lambda wanted, since, rescan: {
                                 p for p in lake if p[1] in wanted.get(p[0], ())},
                             landed_interval=0)
    client = producer._producer = FakeClient("c1")
    recs = [rating(i) for i in range(5)]
    for r in recs:
        producer.write("events.rating", r)
    for f in client.futures:
        f.success(None)  # all acknowledged by broker c1
    producer.tick()  # the flusher learns the cluster id; the lake holds none yet
    assert producer.pending == 5 and producer.depth == 0
    lake.update(("events.rating", r["event_id"]) for r in recs[:2])
    producer.tick()
    assert producer.pending == 3  # landed ones left the log
    client.sent.clear()
    client.ack_at_flush = True
    client._metadata.cluster_id = "c2"  # the broker restarted, empty
    lake.add(("events.rating", recs[2]["event_id"]))  # landed meanwhile
    producer.tick()
    resent = [json.loads(v)["event_id"] for _, v in client.sent]
    assert sorted(resent) == sorted(r["event_id"] for r in recs[3:])
    assert producer.pending == 2 and producer.depth == 0 and not producer.degraded
    producer.close(timeout=1)


def test_adopted_entries_make_the_next_look_at_the_lake_a_rescan(settings, tmp_path):
    """Events in an adopted log may have landed before they were pending here: the first
    look at the lake after an adoption asks for a rescan (so does the first look of all)."""
    calls: list[bool] = []
    parent = tmp_path / "wal"
    gone = WriteAheadLog.claim(parent, "gone")
    r = rating(0)
    gone.append("events.rating", None, value(r), r["event_id"])
    gone.close()  # its owner gone: an orphan
    producer = EventProducer(settings.kafka, WriteAheadLog.claim(parent, "me"),
                             start_flusher=False, landed_interval=0, adopt_interval=0,
                             landed=lambda wanted, since, rescan: calls.append(rescan) or {
                                 ("events.rating", r["event_id"])})
    producer.tick()
    assert calls == [True] and producer.pending == 0  # landed long ago: not resent
    producer.write("events.rating", rating(1))
    producer.tick()
    assert calls == [True, False]
    again = WriteAheadLog.claim(parent, "gone-too")
    again.append("events.rating", None, b"{}", "x")
    again.close()
    producer.tick()  # adopts it, then looks again from the oldest entry's time
    assert calls == [True, False, True]
    producer.close(timeout=1)


def test_a_late_outcome_from_a_replaced_client_does_not_settle_an_entry(settings, tmp_path):
    producer = EventProducer(settings.kafka, tmp_path / "wal", start_flusher=False,
                             landed=lambda wanted, since, rescan: set())
    client = producer._producer = FakeClient()
    for i in range(5):
        producer.write("events.rating", rating(i))
        producer.send("events.reco", {"user_id": i + 1, "event_id": str(i)})
    client.futures[0].success(None)  # one write and one reco record acknowledged, the
    client.futures[1].success(None)  # rest hang
    producer._drop_producer()  # what a failed replay does
    assert producer.depth == 8 and producer.pending == 5  # 4 writes + 4 reco records
    client.futures[2].success(None)  # a late outcome changes nothing
    client.futures[3].failure(RuntimeError("late"))
    assert producer.depth == 8
    producer.close(timeout=1)


def test_a_write_is_refused_not_lost_when_the_log_is_full(settings, tmp_path):
    w = WriteAheadLog(tmp_path / "log", max_bytes=1000)
    producer = EventProducer(settings.kafka, w, start_flusher=False,
                             landed=lambda wanted, since, rescan: set())
    producer._producer = FakeClient()
    with pytest.raises(WalFull):
        for i in range(100):
            producer.write("events.rating", rating(i))
    assert 0 < producer.pending < 100
    producer.close(timeout=1)


# -- what the lake landed --------------------------------------------------------------------

def test_landed_ids_reads_new_files_once_and_counts_dead_letters(tmp_path):
    from backend.data.batch import validate
    from backend.data.events import DlqEvent
    from backend.data.lake import Lake, LandedIds
    from tests.unit.test_lake import rating_frame

    lake = Lake(tmp_path / "lake")
    landed = LandedIds(lake, slack=0)
    old = rating_frame(2)
    lake.write("events.rating", old)
    time.sleep(0.05)
    t0 = time.time()
    first, second = rating_frame(3), rating_frame(2)
    refused = rating(0)
    asked = {"events.rating": {*old["event_id"], *first["event_id"], *second["event_id"],
                               refused["event_id"], "never-landed"},
             "events.watch": {"other"}}
    lake.write("events.rating", first)
    got = landed(asked, t0)  # by write time: not `old`
    assert got == {("events.rating", i) for i in first["event_id"]}
    assert landed(asked, t0) == set()  # files already read are not read again
    lake.write("events.rating", second)  # read from its commit alone
    assert landed(asked, t0) == {("events.rating", i) for i in second["event_id"]}
    dlq = DlqEvent(source_topic="events.rating", partition=0, offset=7,
                   raw=json.dumps(refused), error="ts in the future")
    other = DlqEvent(source_topic="events.watch", partition=0, offset=8,
                     raw=json.dumps(rating(1)), error="x")
    frame = validate(DlqEvent, [dlq.to_record(), other.to_record()]).valid.drop(columns="_pos")
    lake.write("events.dlq", frame.assign(kafka_partition=0, kafka_offset=[0, 1]))
    assert landed(asked, t0) == {("events.rating", refused["event_id"])}  # refused: landed
    # an older write time than covered: the table is scanned again
    assert len(landed(asked, t0 - 60)) == 2 + 3 + 2 + 1  # and its dead letter
    # events adopted from a gone replica's log may have landed long ago, in files read
    # before they were pending here: `rescan` reads from the time asked again
    assert landed(asked, t0) == set()
    assert len(landed(asked, t0, rescan=True)) == 3 + 2 + 1
    # only what was asked for
    assert landed({"events.rating": {first["event_id"].iloc[0]}}, t0, rescan=True) == {
        ("events.rating", first["event_id"].iloc[0])}
    assert LandedIds(lake, slack=0)(asked, time.time() + 60) == set()
