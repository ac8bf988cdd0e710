"""A/B assignment: sticky per user, by hashing (experiment salt, user id) into the split."""

from __future__ import annotations

import hashlib
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
