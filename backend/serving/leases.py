"""Rate-limit tokens an ingress replica holds per client, taken from the shared bucket (the
ServingState deployment) a lease at a time.

One lease request per client is in flight at once: the client's concurrent requests wait for
it and share what it grants. Before, requests that arrived together each asked for a lease
and the replica kept only the last one's tokens, so a client at ~1,000 req/s over 32
connections spent its limit on discarded leases and got 429s well under its limit. Plain
asyncio: unit-tested without Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Leases:
    def __init__(self, acquire: Callable[[str], Awaitable[tuple[int, int]]],
                 max_clients: int = 100_000) -> None:
        self.acquire = acquire  # client -> (tokens granted, Retry-After when none)
        self.max_clients = max_clients
        self._tokens: dict[str, int] = {}
        self._pending: dict[str, asyncio.Future[tuple[int, int]]] = {}

    async def take(self, client: str) -> int:
        """Spend one of `client`'s tokens: 0 when allowed, else Retry-After seconds."""
        while self._tokens.get(client, 0) <= 0:
            pending = self._pending.get(client)
            if pending is None:
                pending = self._pending[client] = asyncio.ensure_future(self._lease(client))
            # shielded: a request whose client goes away does not cancel the others' lease
            granted, retry_after = await asyncio.shield(pending)
            if not granted:
                return max(1, retry_after)
        self._tokens[client] -= 1
        return 0

    async def _lease(self, client: str) -> tuple[int, int]:
        try:
            granted, retry_after = await self.acquire(client)
        finally:
            del self._pending[client]
        if granted:
            if client not in self._tokens and len(self._tokens) >= self.max_clients:
                for old in list(self._tokens)[:self.max_clients // 2]:  # forget the oldest
                    del self._tokens[old]
            self._tokens[client] = self._tokens.get(client, 0) + granted
        return granted, retry_after
