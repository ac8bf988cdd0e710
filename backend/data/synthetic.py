"""Synthetic ratings shaped like MovieLens-25M, for measuring the platform at that size.

MovieLens-25M (Harper and Konstan 2015, the GroupLens README of the 2019 release) has
25,000,095 ratings by 162,541 users of 59,047 of its 62,423 movies; every user rated at
least 20 movies; activity per user is heavy-tailed (median about 70, mean about 154) and so
is popularity (the most-rated movie has about 81k ratings, 0.33% of all; most movies have a
handful). Its data may not be redistributed, and the 250 MB download is not available here,
so the benchmarks generate the same shape instead: user activity lognormal (median 70,
mean 154) with a floor of 20, item popularity a shifted power law fitted to the top share
and the unrated share above, ratings in whole stars in the proportions MovieLens-100K
shows, one rating per (user, item), and timestamps spread over each user's
own span of activity. Users have no tastes: an item is drawn by its popularity alone, so the
data measures what the platform costs at this size, not how well a model ranks (on it, item
kNN recommends little beyond the head). Generated in chunks of users so 25M ratings never
sit in Python objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

# MovieLens-100K's star shares (1..5): the events' rating field takes whole stars
STAR_SHARES = np.array([0.0611, 0.1137, 0.2715, 0.3417, 0.2120])


@dataclass(frozen=True)
class Shape:
    """The size and skew to generate; the defaults are MovieLens-25M's."""

    users: int = 162_541
    items: int = 62_423
    ratings: int = 25_000_095
    min_per_user: int = 20
    activity_median: float = 70.0
    activity_sigma: float = 1.24  # mean / median = exp(sigma^2 / 2) ~ 2.2
    # rank offset and exponent of the power law: top share 0.37%, median item 5 ratings,
    # about 3.8k items unrated (MovieLens-25M: 0.33%, 6, 3.4k)
    popularity_offset: float = 300.0
    popularity_exponent: float = 2.1
    start: str = "2015-01-01"
    end: str = "2019-11-21"

    @classmethod
    def scaled(cls, ratings: int) -> Shape:
        """The same skew at another size: users in MovieLens-25M's proportion (so the same
        ratings per user), items too but at least 2,000 (a heavy user needs room), and the
        popularity offset with the items."""
        f = ratings / cls.ratings
        items = max(2_000, round(cls.items * f))
        return cls(users=max(50, round(cls.users * f)), items=items, ratings=ratings,
                   popularity_offset=max(1.0, cls.popularity_offset * items / cls.items))


def activity(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Ratings per user: lognormal, at least `min_per_user`, summing to `shape.ratings`
    (capped at the catalog size)."""
    raw = rng.lognormal(np.log(shape.activity_median), shape.activity_sigma, shape.users)
    extra = np.maximum(raw - shape.min_per_user, 0)
    budget = shape.ratings - shape.min_per_user * shape.users
    if budget < 0:
        raise ValueError(f"{shape.ratings} ratings cannot give {shape.users} users "
                         f"{shape.min_per_user} each")
    cap = shape.items // 2  # MovieLens-25M's most active user rated about half the movies
    if cap * shape.users < shape.ratings or cap < shape.min_per_user:
        raise ValueError(f"{shape.items} items cannot hold {shape.ratings} ratings of "
                         f"{shape.users} users")
    counts = shape.min_per_user + np.floor(extra * budget / extra.sum()).astype(np.int64)
    counts = np.minimum(counts, cap)
    short = shape.ratings - int(counts.sum())  # rounding and the cap: the rest, one by one
    while short > 0:
        room = np.flatnonzero(counts < cap)
        take = rng.choice(room, size=min(short, len(room)), replace=False)
        counts[take] += 1
        short -= len(take)
    return counts


def popularity(shape: Shape) -> np.ndarray:
    """Each item's probability of being chosen (item id = rank + 1: id 1 is the most
    popular)."""
    w = (np.arange(shape.items) + shape.popularity_offset) ** -shape.popularity_exponent
    return w / w.sum()


def ratings(shape: Shape = Shape(), seed: int = 0, users_per_chunk: int = 20_000
            ) -> Iterator[pd.DataFrame]:
    """user_id, item_id, rating (1..5), ts (UTC), in chunks of whole users; the chunks
    together hold exactly `shape.ratings` rows, one per (user, item)."""
    rng = np.random.default_rng(seed)
    counts = activity(shape, rng)
    p = popularity(shape)
    cdf = np.cumsum(p)
    t0, t1 = pd.Timestamp(shape.start, tz="UTC").value, pd.Timestamp(shape.end, tz="UTC").value
    for lo in range(0, shape.users, users_per_chunk):
        n = counts[lo:lo + users_per_chunk]
        user = np.repeat(np.arange(lo, lo + len(n)), n)
        item = _distinct_items(rng, cdf, user)
        star = rng.choice(5, size=len(user), p=STAR_SHARES / STAR_SHARES.sum()) + 1
        # each user active over a span of their own inside the whole period
        begin = rng.uniform(t0, t1, len(n))
        span = np.minimum(rng.exponential(180 * 86_400e9, len(n)), t1 - begin)
        ts = np.repeat(begin, n) + rng.uniform(0, 1, len(user)) * np.repeat(span, n)
        yield pd.DataFrame({"user_id": user + 1, "item_id": item + 1,
                            "rating": star.astype(np.int64),
                            "ts": pd.to_datetime(ts // 1e9, unit="s", utc=True)})


def _distinct_items(rng: np.random.Generator, cdf: np.ndarray, user: np.ndarray
                    ) -> np.ndarray:
    """For each row, an item by popularity, distinct among the rows of the same user: draw,
    find repeats within a user, draw those again."""
    out = np.minimum(np.searchsorted(cdf, rng.random(len(user)) * cdf[-1]), len(cdf) - 1)
    p = np.diff(cdf, prepend=0.0)

    def flatter(r: int) -> np.ndarray:
        return cdf if r < 3 else np.cumsum(p ** (0.5 ** (r - 2)))
    rounds = 0
    while True:
        key = user.astype(np.int64) * len(cdf) + out
        order = np.argsort(key, kind="stable")
        dup = np.zeros(len(key), dtype=bool)
        dup[order[1:]] = key[order[1:]] == key[order[:-1]]
        if not dup.any():
            return out
        redraw = np.flatnonzero(dup)
        # heavy users exhaust the head: later rounds draw from flatter and flatter power laws
        # (exponent halved each round), so the loop ends and the tail stays a tail
        flat = flatter(rounds)
        out[redraw] = np.minimum(np.searchsorted(flat, rng.random(len(redraw)) * flat[-1]),
                                 len(cdf) - 1)
        rounds += 1
