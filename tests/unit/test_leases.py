"""Leases: a client's concurrent requests share one lease request and every token it grants."""

from __future__ import annotations

import asyncio

from backend.serving.leases import Leases


class Bucket:
    """The shared state's side: `tokens` left, `size` per lease."""

    def __init__(self, tokens: int, size: int) -> None:
        self.tokens, self.size, self.calls = tokens, size, 0

    async def __call__(self, client: str) -> tuple[int, int]:
        self.calls += 1
        await asyncio.sleep(0.01)  # a handle call: concurrent requests arrive meanwhile
        granted = min(self.size, self.tokens)
        self.tokens -= granted
        return granted, (0 if granted else 7)


def test_concurrent_requests_share_one_lease_and_lose_no_tokens():
    async def scenario():
        bucket = Bucket(tokens=100, size=10)
        leases = Leases(bucket)
        answers = await asyncio.gather(*(leases.take("key:sim") for _ in range(100)))
        return bucket, answers, await leases.take("key:sim")

    bucket, answers, extra = asyncio.run(scenario())
    assert answers == [0] * 100  # the client's whole limit, none wasted
    assert bucket.calls == 11 and bucket.tokens == 0  # 10 leases, then one refused
    assert extra == 7  # then Retry-After from the shared bucket


def test_clients_do_not_share_tokens_and_a_cancelled_waiter_cancels_nothing():
    async def scenario():
        bucket = Bucket(tokens=100, size=5)
        leases = Leases(bucket)
        gone = asyncio.ensure_future(leases.take("ip:1"))
        stays = asyncio.ensure_future(leases.take("ip:1"))
        await asyncio.sleep(0)
        gone.cancel()  # its client disconnected
        other = await leases.take("ip:2")
        return bucket, await stays, other, leases

    bucket, stays, other, leases = asyncio.run(scenario())
    assert (stays, other) == (0, 0)
    assert bucket.calls == 2 and leases._tokens == {"ip:1": 4, "ip:2": 4}
