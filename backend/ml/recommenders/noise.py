"""Answer noise against model extraction: a served list sampled from a Plackett-Luce
distribution over the model's ranking, seeded per user and model version, so one user's
answers stay the same until the model changes and repeated queries do not average it out."""

from __future__ import annotations

import hashlib

import numpy as np


def candidates(k: int, limit: int = 100) -> int:
    """How far down the model's ranking a k-item answer may reach (twice k, at most `limit`)."""
    return min(max(2 * k, k + 10), limit)


def plackett_luce(ranked: list[int], k: int, temperature: float, seed: str) -> list[int]:
    """k items of `ranked` (best first) drawn without replacement with weights
    exp(-rank / temperature): a Plackett-Luce sample, drawn as the top k of
    log-weight + Gumbel noise (the Gumbel-top-k trick; Kool, van Hoof and Welling 2019).
    Temperature 0 keeps the ranking; a higher one reaches further down it."""
    if temperature <= 0 or len(ranked) <= 1:
        return ranked[:k]
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8],
                                               "big"))
    keys = -np.arange(len(ranked)) / temperature + rng.gumbel(size=len(ranked))
    order = np.argsort(-keys, kind="stable")[:k]
    return [ranked[i] for i in order]
