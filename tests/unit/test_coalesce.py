"""Coalescer: concurrent requests share downstream calls; nobody waits when idle."""

from __future__ import annotations

import asyncio

import pytest

from backend.serving.coalesce import Coalescer


class Downstream:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail = fail

    async def __call__(self, batch: list[int]) -> list[int]:
        self.batches.append(list(batch))
        await self.release.wait()
        if self.fail:
            raise ValueError("model missing")
        return [x * 10 for x in batch]


def test_idle_request_goes_at_once_and_busy_ones_share_the_next_call():
    async def scenario():
        down = Downstream()
        co = Coalescer(down, max_inflight=1, max_batch=3)
        first = asyncio.ensure_future(co.submit(1))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert down.batches == [[1]]  # sent without waiting for company
        rest = [asyncio.ensure_future(co.submit(x)) for x in (2, 3, 4, 5)]
        await asyncio.sleep(0)
        assert down.batches == [[1]]  # queued behind the call in flight
        down.release.set()
        results = await asyncio.gather(first, *rest)
        assert results == [10, 20, 30, 40, 50]  # each waiter gets its own answer
        assert down.batches == [[1], [2, 3, 4], [5]]  # max_batch holds
        assert (co.calls, co.requests) == (3, 5)
    asyncio.run(scenario())


def test_max_inflight_calls_go_out_together():
    async def scenario():
        down = Downstream()
        co = Coalescer(down, max_inflight=2)
        futs = [asyncio.ensure_future(co.submit(x)) for x in (1, 2, 3)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert down.batches == [[1], [2]]
        down.release.set()
        assert await asyncio.gather(*futs) == [10, 20, 30]
        assert down.batches == [[1], [2], [3]]
    asyncio.run(scenario())


def test_a_failed_call_fails_its_whole_batch_and_later_calls_still_go():
    async def scenario():
        down = Downstream(fail=True)
        co = Coalescer(down, max_inflight=1)
        futs = [asyncio.ensure_future(co.submit(x)) for x in (1, 2, 3)]
        down.release.set()
        outcomes = await asyncio.gather(*futs, return_exceptions=True)
        assert all(isinstance(o, ValueError) for o in outcomes)
        down.fail = False
        assert await co.submit(7) == 70
        assert co._inflight == 0
    asyncio.run(scenario())


def test_a_wrong_number_of_results_is_an_error_not_a_mixup():
    async def short(batch):
        return batch[:-1]

    async def scenario():
        co = Coalescer(short, max_inflight=1)
        futs = [asyncio.ensure_future(co.submit(x)) for x in (1, 2)]
        outcomes = await asyncio.gather(*futs, return_exceptions=True)
        assert all(isinstance(o, RuntimeError) for o in outcomes)
    asyncio.run(scenario())


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        Coalescer(Downstream(), max_inflight=0)
