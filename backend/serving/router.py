"""A/B assignment: sticky per user, by hashing (experiment salt, user id) into the split."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BUCKETS = 10_000


@dataclass
class RouterLogic:
    """`split` is the share of users sent to variant A; the rest go to B.

    Changing the salt starts a new experiment (users are re-drawn); changing the split moves
    only the users between the old and the new boundary.
    """

    split: float = 0.5
    salt: str = "exp-1"

    def __post_init__(self) -> None:
        self.reconfigure({"split": self.split, "salt": self.salt})

    def reconfigure(self, config: dict[str, Any]) -> None:
        split = float(config.get("split", self.split))
        if not 0.0 <= split <= 1.0:
            raise ValueError(f"split must be within [0, 1], got {split}")
        salt = str(config.get("salt", self.salt))
        if not salt:
            raise ValueError("salt must not be empty")
        self.split, self.salt = split, salt

    def bucket(self, user_id: int) -> int:
        digest = hashlib.sha256(f"{self.salt}:{int(user_id)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % BUCKETS

    def assign(self, user_id: int) -> str:
        return "A" if self.bucket(user_id) < round(self.split * BUCKETS) else "B"


def weighted_arm(bucket: int, weights: Sequence[tuple[str, float]]) -> str:
    """The arm whose share of [0, BUCKETS) holds `bucket`: arms in their order, each share in
    proportion to its weight (two arms (A, split), (B, 1 - split) give `RouterLogic.assign`)."""
    total = sum(w for _, w in weights)
    if not weights or total <= 0:
        raise ValueError("weights must have a positive sum")
    edge = 0.0
    for name, w in weights:
        edge += w / total * BUCKETS
        if bucket < round(edge):
            return name
    return weights[-1][0]
