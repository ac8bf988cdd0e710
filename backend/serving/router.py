"""Assignment: sticky per user, by hashing (salt, user id) into [0, BUCKETS) and cutting that
range into the arms' shares, in the arms' order."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence

from backend.serving.schemas import Allocation
from registry.experiments import Experiment

BUCKETS = 10_000


def default_allocation(variants: Sequence[str], split: float, salt: str) -> Allocation:
    """The allocation with no experiment running: the first variant serves `split` of the
    users, the second the rest, any others nobody (an experiment names them)."""
    if not variants:
        raise ValueError("no variants to allocate")
    if len(variants) == 1:
        return Allocation(weights={variants[0]: 1.0}, salt=salt)
    return Allocation(weights={variants[0]: split, variants[1]: 1.0 - split}, salt=salt)


def allocation_of(exp: Experiment) -> Allocation | None:
    """A running experiment's allocation now: its arms in their order, the current epoch's
    weights (None once it stopped)."""
    if not exp.running:
        return None
    weights = exp.epoch.weights
    return Allocation(weights={a.variant: weights[a.variant] for a in exp.spec.arms},
                      salt=exp.spec.salt, experiment=exp.spec.id, epoch=exp.epoch.number)


def edges(weights: Sequence[tuple[str, float]]) -> list[int]:
    """Each arm's upper bucket bound: arms in their order, each share in proportion to its
    weight (the last bound is BUCKETS)."""
    total = sum(w for _, w in weights)
    if not weights or total <= 0 or any(w < 0 for _, w in weights):
        raise ValueError("weights must be non-negative with a positive sum")
    out, edge = [], 0.0
    for _, w in weights:
        edge += w / total * BUCKETS
        out.append(round(edge))
    out[-1] = BUCKETS
    return out


def weighted_arm(bucket: int, weights: Sequence[tuple[str, float]]) -> str:
    """The arm whose share of [0, BUCKETS) holds `bucket`."""
    return weights[bisect.bisect_right(edges(weights), bucket)][0]


class RouterLogic:
    """Assigns users under one allocation. Changing the salt re-draws every user; changing
    the weights moves only the users whose bucket changes side of a bound."""

    def __init__(self, allocation: Allocation) -> None:
        self.follow(allocation)

    def follow(self, allocation: Allocation) -> None:
        arms = list(allocation.weights.items())
        self._edges = edges(arms)  # raises before anything changes
        self._names = [n for n, _ in arms]
        self.allocation = allocation

    def bucket(self, user_id: int) -> int:
        digest = hashlib.sha256(f"{self.allocation.salt}:{int(user_id)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % BUCKETS

    def assign(self, user_id: int) -> str:
        return self._names[bisect.bisect_right(self._edges, self.bucket(user_id))]
