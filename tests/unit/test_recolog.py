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


def test_a_batch_that_cannot_be_shipped_falls_back_record_by_record():
    async def scenario():
        sink, local = Sink(fail=True), []
        shipper = LogShipper(sink, local.append, interval=0.01)
        shipper.add({"n": 1})
        shipper.add({"n": 2})
        await asyncio.sleep(0.04)
        sink.fail = False
        shipper.add({"n": 3})
        await asyncio.sleep(0.04)
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
