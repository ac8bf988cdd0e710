"""Token-bucket rate limiting per client, with per-client limits.

Pure logic with an injectable clock. To hold one limit across several ingress replicas, one
instance runs in a single place (a Ray actor) and every replica asks it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Bucket:
    rate: float  # tokens per second
    capacity: float
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """Take one token; returns 0 if allowed, else seconds until a token is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class RateLimiterLogic:
    """`per_minute` for everybody; `overrides` maps a client id to its own per-minute limit."""

    per_minute: float = 100.0
    overrides: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    max_clients: int = 100_000
    _buckets: dict[str, Bucket] = field(default_factory=dict)

    def check(self, client: str) -> tuple[bool, int]:
        """(allowed, Retry-After seconds); Retry-After is 0 when allowed."""
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            limit = self.overrides.get(client, self.per_minute)
            if len(self._buckets) >= self.max_clients:
                self._evict(now)
            bucket = self._buckets[client] = Bucket(limit / 60.0, limit, limit, now)
        wait = bucket.take(now)
        return wait == 0.0, math.ceil(wait) if wait else 0

    def _evict(self, now: float) -> None:
        """Forget clients whose buckets are full again: they are indistinguishable from new."""
        full = [c for c, b in self._buckets.items()
                if b.tokens + (now - b.stamp) * b.rate >= b.capacity]
        for c in full:
            del self._buckets[c]
