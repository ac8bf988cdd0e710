"""Assignment: sticky per user, by weighted rendezvous hashing over the arms.

Each arm draws u = hash(salt, user, arm) in (0, 1) and scores -weight / ln(u) (an
exponential race: arm a wins with probability weight_a / sum(weights), Schindelhauer &
Schomaker 2005). Raising an arm's weight moves users only to it, lowering it only away from
it, and a new arm only takes users: nobody is moved between two arms whose weights stayed.
A new salt re-draws everyone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from backend.serving.schemas import Allocation
from registry.experiments import Experiment

SCALE = float(2 ** 64)


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
                      salt=exp.spec.salt, experiment=exp.spec.id, epoch=exp.epoch.number,
                      revision=exp.revision)


def uniform(salt: str, user_id: int, arm: str) -> float:
    """A uniform draw in (0, 1) per (salt, user, arm)."""
    digest = hashlib.sha256(f"{salt}:{int(user_id)}:{arm}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / SCALE


class RouterLogic:
    """Assigns users under one allocation (see the module's docstring)."""

    def __init__(self, allocation: Allocation) -> None:
        self.follow(allocation)

    def follow(self, allocation: Allocation) -> None:
        arms = [(n, float(w)) for n, w in allocation.weights.items()]
        if not arms or any(not math.isfinite(w) or w < 0 for _, w in arms) or \
                not 0 < sum(w for _, w in arms) < math.inf:
            raise ValueError(f"weights must be finite, non-negative, with a positive sum: "
                             f"{allocation.weights}")  # raised before anything changes
        self._arms = [(n, w) for n, w in arms if w > 0]
        self.allocation = allocation

    def assign(self, user_id: int) -> str:
        salt = self.allocation.salt
        return max(self._arms, key=lambda a: -a[1] / math.log(uniform(salt, user_id, a[0])))[0]
