"""Exposure fairness over served recommendations: concentration, position-weighted exposure,
diversity parity across user segments.

Inputs are plain arrays or frames taken from the `events.reco` log (one row per response, its
`items` a ranked list), so the same functions serve the live snapshot and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from backend.ml.metrics.ranking import gini, intra_list_diversity

AGE_BANDS = (0, 18, 25, 35, 45, 56, 200)
AGE_LABELS = ("<18", "18-24", "25-34", "35-44", "45-55", "56+")


def top_share(counts: np.ndarray, n: int = 10) -> float:
    """Share of all recommendation slots taken by the `n` most recommended items
    (the "top-10 share" concentration measure of the milestone report)."""
    x = np.asarray(counts, dtype=np.float64)
    total = x.sum()
    if total == 0:
        return 0.0
    return float(np.sort(x)[::-1][:n].sum() / total)


def position_weighted_exposure(lists: Iterable[Sequence[int]], catalog: Sequence[int],
                               ) -> np.ndarray:
    """Exposure of each catalog item = sum over its appearances of 1 / log2(rank + 1), rank
    1-based: the DCG position discount as a model of attention (Singh & Joachims 2018,
    "Fairness of Exposure in Rankings")."""
    index = {int(item): i for i, item in enumerate(catalog)}
    out = np.zeros(len(catalog), dtype=np.float64)
    for recs in lists:
        for rank, item in enumerate(recs, start=1):
            j = index.get(int(item))
            if j is not None:
                out[j] += 1.0 / np.log2(rank + 1)
    return out


def exposure_gini(lists: Iterable[Sequence[int]], catalog: Sequence[int]) -> float:
    """Gini (RecBole definition, full catalog, zero-filled) of position-weighted exposure."""
    return gini(position_weighted_exposure(lists, catalog))


def activity_segment(n_ratings: int, low: int = 10, high: int = 30) -> str:
    """User-activity segment of the milestone report: low (< 10 ratings), medium, high (> 30)."""
    if n_ratings < low:
        return "low"
    return "high" if n_ratings > high else "medium"


def age_band(age: float | None) -> str:
    """MovieLens-style age band label; "unknown" without an age."""
    if age is None or not np.isfinite(age):
        return "unknown"
    i = int(np.searchsorted(AGE_BANDS, age, side="right")) - 1
    return AGE_LABELS[min(max(i, 0), len(AGE_LABELS) - 1)]


def diversity_by_segment(lists_by_user: Mapping[int, list[Sequence[int]]],
                         segment_of_user: Mapping[int, str],
                         features: Mapping[int, np.ndarray]) -> dict[str, float]:
    """Mean per-user intra-list diversity (Ziegler et al. 2005) within each segment: each user
    counts once, whatever their number of requests (so heavy users do not dominate)."""
    per_segment: dict[str, list[float]] = {}
    for user, lists in lists_by_user.items():
        seg = segment_of_user.get(user)
        if seg is None:
            continue
        if any(len(r) >= 2 for r in lists):
            per_segment.setdefault(seg, []).append(intra_list_diversity(lists, features))
    return {seg: float(np.mean(v)) for seg, v in sorted(per_segment.items())}


def parity_gap(values: Mapping[str, float]) -> float:
    """max - min over groups of a per-group metric; 0 = parity (0.0 for fewer than 2 groups)."""
    v = list(values.values())
    return float(max(v) - min(v)) if len(v) >= 2 else 0.0


def segments(users: pd.DataFrame, rating_counts: Mapping[int, int]) -> dict[str, dict[int, str]]:
    """Segment maps by activity, gender and age band for the users in `users` (user_id, and
    optional age, gender); a user with no rating is in the low-activity segment."""
    ids = users["user_id"].astype(int).tolist()
    out = {"activity": {u: activity_segment(int(rating_counts.get(u, 0))) for u in ids}}
    if "gender" in users:
        out["gender"] = dict(zip(ids, users["gender"].fillna("unknown").astype(str),
                                 strict=True))
    if "age" in users:
        out["age"] = dict(zip(ids, (age_band(float(a)) if pd.notna(a) else "unknown"
                                    for a in users["age"]), strict=True))
    return out
