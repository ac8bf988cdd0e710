"""LogShipper: the ingress's reco log leaves in batches, and nothing is lost when it cannot."""

from __future__ import annotations

import asyncio

from backend.serving.recolog import LogShipper


class Sink:
    def __init__(self, fail: bool = False, hang: bool = False) -> None:
        self.batches: list[list[dict]] = []
        self.fail = fail
        self.hang = hang

    async def __call__(self, batch: list[dict]) -> None:
        if self.fail:
            raise ConnectionError("replica gone")
        if self.hang:
            await asyncio.sleep(3600)
        self.batches.append(list(batch))


def test_records_leave_together_once_per_interval_in_bounded_batches():
    async def scenario():
        sink, local = Sink(), []
        shipper = LogShipper(sink, local.append, interval=0.02, max_batch=3)
        for i in range(5):
            shipper.add({"n": i})
        assert sink.batches == []  # nothing on the caller's path
        await asyncio.sleep(0.05)
        assert sink.batches == [[{"n": 0}, {"n": 1}, {"n": 2}], [{"n": 3}, {"n": 4}]]
        shipper.add({"n": 5})
        await asyncio.sleep(0.05)
        assert sink.batches[-1] == [{"n": 5}]
        await shipper.close()
        return local, shipper

    local, shipper = asyncio.run(scenario())
    assert local == [] and shipper.shipped == 6 and shipper.fell_back == 0


async def _until(cond, timeout: float = 10.0) -> None:
    """Wait for the shipper's loop (not a fixed sleep: a loaded machine runs it late)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "the shipper did not get there"
        await asyncio.sleep(0.01)


def test_a_batch_that_cannot_be_shipped_falls_back_record_by_record():
    async def scenario():
        sink, local = Sink(fail=True), []
        shipper = LogShipper(sink, local.append, interval=0.01)
        shipper.add({"n": 1})
        shipper.add({"n": 2})
        await _until(lambda: shipper.fell_back == 2)
        sink.fail = False
        shipper.add({"n": 3})
        await _until(lambda: shipper.shipped == 1)
        await shipper.close()
        return sink, local, shipper

    sink, local, shipper = asyncio.run(scenario())
    assert local == [{"n": 1}, {"n": 2}]
    assert sink.batches == [[{"n": 3}]]
    assert (shipper.shipped, shipper.fell_back) == (1, 2)


def test_close_ships_what_is_left():
    async def scenario():
        sink, local = Sink(), []
        shipper = LogShipper(sink, local.append, interval=60)
        shipper.add({"n": 1})
        await shipper.close()
        return sink, local

    sink, local = asyncio.run(scenario())
    assert sink.batches == [[{"n": 1}]] and local == []


def test_a_full_buffer_sends_the_overflow_to_the_fallback():
    async def scenario():
        sink, local = Sink(), []
        shipper = LogShipper(sink, local.append, interval=60, max_buffer=2)
        for i in range(4):
            shipper.add({"n": i})
        await shipper.close()
        return sink, local

    sink, local = asyncio.run(scenario())
    assert sink.batches == [[{"n": 0}, {"n": 1}]] and local == [{"n": 2}, {"n": 3}]


def test_a_ship_that_hangs_times_out_into_the_fallback():
    async def scenario():
        sink, local = Sink(hang=True), []
        shipper = LogShipper(sink, local.append, interval=60, timeout=0.05)
        shipper.add({"n": 1})
        await shipper.close()  # a shutdown does not wait for a replica that never answers
        return local, shipper

    local, shipper = asyncio.run(scenario())
    assert local == [{"n": 1}] and shipper.fell_back == 1


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.depth = 0
        self.pending = 0
        self.log_bytes = 0
        self.degraded = False
        self.spooled = 0
        self.closed = False

    def send(self, topic: str, event: dict) -> None:
        self.sent.append((topic, event))

    def close(self, timeout: float) -> None:
        self.closed = True


def test_reco_log_produces_batches_and_pushes_its_producers_health():
    from backend.serving.metrics import MetricsLogic, MetricsPayload, take_replica_delta
    from backend.serving.recolog import RecoLogLogic

    async def scenario():
        take_replica_delta()
        producer, pushed, sums = Producer(), [], MetricsLogic()
        failing = [True]

        async def record(payload: MetricsPayload) -> None:
            if failing[0]:  # the state replica restarting: the next period tries again
                failing[0] = False
                raise ConnectionError("state away")
            pushed.append(payload)
            sums.merge(payload)

        logic = RecoLogLogic(producer, "recolog-1", record, period=0.01)
        assert logic.write([{"n": 1}, {"n": 2}]) == 2  # also starts the pusher
        producer.depth, producer.degraded, producer.spooled = 3, True, 5
        await asyncio.sleep(0.05)
        producer.spooled = 7
        await asyncio.sleep(0.05)
        logic.close()
        return producer, pushed, sums

    producer, pushed, sums = asyncio.run(scenario())
    assert producer.sent == [("events.reco", {"n": 1}), ("events.reco", {"n": 2})]
    assert producer.closed and len(pushed) >= 2
    assert sums.fresh_gauges("reco_spool_depth") == [3.0]
    assert sums.fresh_gauges("reco_broker_degraded") == [1.0]
    # produce errors count increments: the 5 went with the push that failed (a delta is
    # taken once), the 2 since arrived with the next push
    assert dict(sums.counters)[("reco_kafka_produce_errors_total", ())] == 2
