"""Training data from events, the temporal split, and offline evaluation of a recommender.

Evaluation ranks the full catalog for every test user (no sampled negatives), excluding the
user's training items; relevance is binary: the user's held-out interactions.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from backend.ml.metrics.ranking import (
    aplt,
    average_precision_at_k,
    catalog_coverage,
    exposure_counts,
    gini,
    intra_list_diversity,
    ndcg_at_k,
    novelty,
    recall_at_k,
)
from backend.ml.recommenders import Recommender
from backend.ml.recommenders.models import long_tail_mask
from backend.ml.results import OfflineMetrics

COLUMNS = ["user_id", "item_id", "ts", "rating", "watched"]


PARTIAL = ["user_id", "item_id", "ts", "rating", "rating_ts", "watched"]


def partial_interactions(events: pd.DataFrame) -> pd.DataFrame:
    """Rating or watch events (a `rating` column marks ratings) -> one row per (user, item)
    in the PARTIAL form: first time seen, the last rating and when it was given, watched.
    Partials of any split of the events merge with `merge_partials` into the same result as
    all events at once, so blocks can be reduced where they are read."""
    rated = "rating" in events
    frame = pd.DataFrame({
        "user_id": events["user_id"].to_numpy(dtype=np.int64),
        "item_id": events["item_id"].to_numpy(dtype=np.int64),
        "ts": pd.to_datetime(events["ts"], utc=True),
        "rating": events["rating"].to_numpy(dtype=np.float64) if rated
        else np.full(len(events), np.nan),
        "watched": np.full(len(events), not rated)})
    frame["rating_ts"] = frame["ts"] if rated else pd.NaT
    return merge_partials(frame[PARTIAL])


def merge_partials(frame: pd.DataFrame) -> pd.DataFrame:
    """Partials -> one row per (user, item): earliest `ts`, the rating with the latest
    `rating_ts` (ties: the higher rating), watched if any part was. Only the rows of pairs
    that occur more than once are grouped (found by one sort of a pair key): at scale
    nearly every pair occurs once, and grouping all of them dominated the retrain's memory."""
    users = frame["user_id"].to_numpy(dtype=np.int64)
    items = frame["item_id"].to_numpy(dtype=np.int64)
    if len(users) < 2:
        return frame[PARTIAL].reset_index(drop=True)
    key = users * (int(items.max()) + 1) + items  # ids are at most MAX_ID: no overflow
    order = np.argsort(key, kind="stable")
    same = np.flatnonzero(key[order[1:]] == key[order[:-1]])
    if not len(same):
        return frame[PARTIAL].reset_index(drop=True)
    repeated = np.zeros(len(key), dtype=bool)
    repeated[order[same]] = repeated[order[same + 1]] = True
    del key, order, same
    ranked = frame[repeated].sort_values(["rating_ts", "rating"], na_position="first",
                                         kind="stable")
    merged = ranked.groupby(["user_id", "item_id"], sort=False).agg(
        ts=("ts", "min"), rating=("rating", "last"), rating_ts=("rating_ts", "last"),
        watched=("watched", "any")).reset_index()
    return pd.concat([frame[~repeated][PARTIAL], merged[PARTIAL]], ignore_index=True)


def _order(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (user, time, item) keys of the interactions' order, as numpy arrays."""
    return (frame["user_id"].to_numpy(dtype=np.int64), frame["ts"].array.asi8,
            frame["item_id"].to_numpy(dtype=np.int64))


def _in_order(users: np.ndarray, ts: np.ndarray, items: np.ndarray) -> bool:
    """True if rows are sorted by (user, time, item): a sort can then be skipped."""
    u0, u1, t0, t1 = users[:-1], users[1:], ts[:-1], ts[1:]
    return bool(np.all((u1 > u0) | ((u1 == u0) & ((t1 > t0) | ((t1 == t0)
                                                               & (items[1:] >= items[:-1]))))))


def finish_interactions(partials: pd.DataFrame,
                        quarantine: set[int] | frozenset[int] = frozenset()) -> pd.DataFrame:
    """Merged partials -> the interactions frame (COLUMNS) sorted by user, time and item,
    without the quarantined users."""
    out = partials
    if quarantine:
        out = out[~out["user_id"].isin(list(quarantine))]
    out = out[COLUMNS].astype({"user_id": "int64", "item_id": "int64", "rating": "float64",
                               "watched": bool})
    users, ts, items = _order(out)
    return out.take(np.lexsort((items, ts, users))).reset_index(drop=True)


def build_interactions(ratings: pd.DataFrame, watches: pd.DataFrame,
                       quarantine: set[int] | frozenset[int] = frozenset()) -> pd.DataFrame:
    """One row per (user, item): first time seen, last rating (NaN if none), watched or not.
    Users in `quarantine` (flagged as spam) are left out."""
    parts = pd.concat([partial_interactions(ratings), partial_interactions(watches)],
                      ignore_index=True)
    return finish_interactions(merge_partials(parts), quarantine)


def temporal_split(frame: pd.DataFrame, test_fraction: float = 0.2,
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the last floor(n * test_fraction) interactions by time are the test set."""
    users, ts, items = _order(frame)
    if not _in_order(users, ts, items):  # interactions come sorted: no copy then
        frame = frame.take(np.lexsort((items, ts, users)))
        users = frame["user_id"].to_numpy(dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else users
    sizes = np.diff(np.r_[starts, len(users)])
    pos = np.arange(len(users))
    pos -= np.repeat(starts, sizes)  # in place: these run over every interaction
    is_test = pos >= np.repeat(sizes - np.floor(sizes * test_fraction).astype(np.int64), sizes)
    del pos
    return frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True)


def evaluate(model: Recommender, train: pd.DataFrame, test: pd.DataFrame, k: int = 10,
             tail_share: float = 0.8, max_users: int | None = None, seed: int = 0
             ) -> OfflineMetrics:
    """Accuracy and beyond-accuracy metrics of `model` (fitted on `train`) on `test`, over
    every test user or a seeded uniform sample of `max_users` of them (the same sample for
    every model evaluated on the same split, so a gate compares like with like)."""
    test_users = np.unique(test["user_id"].to_numpy(dtype=np.int64))
    if max_users is not None and len(test_users) > max_users:
        pick = np.random.default_rng(seed).choice(len(test_users), max_users, replace=False)
        test_users = test_users[np.sort(pick)]
        test = test[test["user_id"].isin(test_users)]  # sets for the sample only
    relevant: dict[int, set[int]] = {}
    for u, i in zip(test["user_id"].tolist(), test["item_id"].tolist(), strict=True):
        relevant.setdefault(u, set()).add(i)
    users = test_users.tolist()
    lists = model.recommend_many(users, k)
    recs = [lists[u] for u in users]
    catalog = model.item_ids
    pop_counts = train.groupby("item_id").size()
    popularity = dict(zip(pop_counts.index.tolist(), pop_counts.tolist(), strict=True))
    tail_idx = long_tail_mask(
        pop_counts.reindex(catalog, fill_value=0).to_numpy(dtype=float), tail_share)
    features = {} if model.features is None else {
        int(i): model.features[j] for j, i in enumerate(catalog)}
    exposure = exposure_counts(recs, catalog.tolist())
    return OfflineMetrics(
        k=k,
        users=len(users),
        ndcg=float(np.mean([ndcg_at_k(lists[u], relevant[u], k) for u in users])),
        recall=float(np.mean([recall_at_k(lists[u], relevant[u], k) for u in users])),
        map=float(np.mean([average_precision_at_k(lists[u], relevant[u], k) for u in users])),
        coverage=catalog_coverage(recs, len(catalog)),
        gini=gini(exposure),
        novelty=novelty(recs, popularity, train["user_id"].nunique()),
        ild=intra_list_diversity(recs, features) if features else math.nan,
        aplt=aplt(recs, set(catalog[tail_idx].tolist())),
    )
