"""Simulated users, free of HTTP and Ray: who visits, what they watch and rate, what bots do.

Hidden preferences come from a low-rank model of all MovieLens-100K ratings: rating residuals
after global mean, user and item biases, factorised by truncated SVD (scaled so the factors
reproduce the residual spread on observed ratings), plus seeded per-user noise. A user's
affinity for item i is b_u + b_i + p_u . q_i in rating units around the global mean.
Everything is drawn from one seeded generator, so a run is replayable given the same
recommendations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from backend.core.settings import SimSettings


@dataclass
class Reaction:
    """What one visit produces: watch and rating event bodies for the API."""

    watches: list[dict] = field(default_factory=list)
    ratings: list[dict] = field(default_factory=list)


def _bias(values: pd.Series, keys: pd.Series, shrink: float) -> pd.Series:
    g = values.groupby(keys)
    return g.sum() / (g.size() + shrink)


class HiddenPreferences:
    """Low-rank affinities fitted on MovieLens ratings (user_id, item_id, rating)."""

    def __init__(self, ratings: pd.DataFrame, rank: int, rng: np.random.Generator) -> None:
        r = ratings["rating"].astype(float)
        self.mu = float(r.mean())
        b_i = _bias(r - self.mu, ratings["item_id"], 10.0)
        b_u = _bias(r - self.mu - ratings["item_id"].map(b_i), ratings["user_id"], 10.0)
        resid = (r - self.mu - ratings["item_id"].map(b_i) - ratings["user_id"].map(b_u))
        self.user_ids = np.sort(ratings["user_id"].unique())
        self.item_ids = np.sort(ratings["item_id"].unique())
        rows = np.searchsorted(self.user_ids, ratings["user_id"])
        cols = np.searchsorted(self.item_ids, ratings["item_id"])
        m = sp.csr_matrix((resid.to_numpy(), (rows, cols)),
                          shape=(len(self.user_ids), len(self.item_ids)))
        u, s, vt = svds(m, k=min(rank, min(m.shape) - 1), random_state=int(rng.integers(10**9)))
        p, q = u * np.sqrt(s), vt.T * np.sqrt(s)
        pred = np.einsum("ij,ij->i", p[rows], q[cols])
        scale = float(np.std(resid) / max(np.std(pred), 1e-9))
        scale = min(math.sqrt(scale), 3.0)  # split between both sides, bounded
        self.p, self.q = p * scale, q * scale
        self.b_u = b_u.reindex(self.user_ids).to_numpy()
        self.b_i = b_i.reindex(self.item_ids).to_numpy()
        self._uidx = {int(x): i for i, x in enumerate(self.user_ids)}
        self._iidx = {int(x): i for i, x in enumerate(self.item_ids)}
        self.extra_items: dict[int, tuple[float, np.ndarray]] = {}
        self.q_sd = float(self.q.std())

    def add_user_noise(self, noise: float, rng: np.random.Generator) -> None:
        self.p = self.p + rng.normal(0.0, noise * float(self.p.std()), self.p.shape)

    def add_item(self, item_id: int, bias: float, vector: np.ndarray) -> None:
        self.extra_items[int(item_id)] = (float(bias), vector)

    def _item(self, item_id: int) -> tuple[float, np.ndarray]:
        j = self._iidx.get(item_id)
        if j is not None:
            return float(self.b_i[j]), self.q[j]
        if item_id not in self.extra_items:  # an id this model never saw: a stable stranger
            rng = np.random.default_rng(item_id)
            self.extra_items[item_id] = (0.0, rng.normal(0, self.q_sd, self.q.shape[1]))
        return self.extra_items[item_id]

    def affinity(self, user_id: int, item_id: int) -> float:
        """Expected rating minus the global mean."""
        b, q = self._item(int(item_id))
        i = self._uidx.get(int(user_id))
        if i is None:
            return b
        return float(self.b_u[i] + b + self.p[i] @ q)


class SimulatorLogic:
    """Population, bots and item releases; `react` and `bot_ratings` decide the events."""

    def __init__(self, ratings: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame,
                 cfg: SimSettings) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.prefs = HiddenPreferences(ratings, cfg.rank, self.rng)
        self.prefs.add_user_noise(cfg.noise, self.rng)
        counts = ratings.groupby("user_id").size()
        self.humans = users["user_id"].to_numpy(dtype=np.int64)
        activity = counts.reindex(self.humans, fill_value=1).to_numpy(dtype=float)
        n_bots = int(round(cfg.bot_share * len(self.humans)))
        first_bot = int(self.humans.max()) + 1000
        self.bots = np.arange(first_bot, first_bot + n_bots, dtype=np.int64)
        self.population = np.concatenate([self.humans, self.bots])
        weights = np.concatenate([activity, np.full(n_bots, cfg.bot_activity * activity.mean())])
        self.weights = weights / weights.sum()
        item_counts = ratings.groupby("item_id").size()
        self.catalog = items["item_id"].to_numpy(dtype=np.int64)
        self.item_rows = items.set_index("item_id")
        # push targets: unpopular items an attacker would want to lift
        unpopular = item_counts.reindex(self.catalog, fill_value=0).sort_values(kind="stable")
        pool = unpopular.index[: max(len(unpopular) // 4, cfg.bot_targets)].to_numpy()
        self.targets = self.rng.choice(pool, size=cfg.bot_targets, replace=False).astype(int)
        # bandwagon fillers: the most popular items, so the targets become their neighbours
        top = item_counts.sort_values(ascending=False, kind="stable")
        self.filler_pool = top.index[: max(5 * cfg.bot_fillers, 50)].to_numpy(dtype=np.int64)
        self.item_mean = (ratings.groupby("item_id")["rating"].mean()
                          .reindex(self.catalog).fillna(self.prefs.mu))
        self.watched: dict[int, set[int]] = {}
        self.bot_rated: dict[int, set[int]] = {}
        self.released: list[int] = []
        self._bot_set = set(self.bots.tolist())

    def is_bot(self, user_id: int) -> bool:
        return int(user_id) in self._bot_set

    def next_user(self) -> int:
        """Users come back in proportion to their MovieLens activity; bots more often."""
        return int(self.rng.choice(self.population, p=self.weights))

    def react(self, user_id: int, items: list[int], now: datetime) -> Reaction:
        """Watch with probability position bias x sigmoid(affinity), rate a share of the
        watched items from affinity plus noise (1..5)."""
        out = Reaction()
        seen = self.watched.setdefault(int(user_id), set())
        ts = now.isoformat()
        for rank, item in enumerate(items):
            if item in seen:
                continue
            a = self.prefs.affinity(user_id, item)
            p = (1.0 / math.log2(rank + 2)) / (1.0 + math.exp(-2.0 * (self.prefs.mu + a - 3.5)))
            if self.rng.random() >= p:
                continue
            seen.add(int(item))
            fraction = float(np.clip(0.5 + 0.25 * a + self.rng.normal(0, 0.2), 0.05, 1.0))
            out.watches.append({"user_id": int(user_id), "item_id": int(item), "ts": ts,
                                "minutes": round(110.0 * fraction, 1),
                                "fraction": round(fraction, 3)})
            if self.rng.random() < self.cfg.rate_share:
                r = int(np.clip(round(self.prefs.mu + a + self.rng.normal(0, 0.6)), 1, 5))
                out.ratings.append({"user_id": int(user_id), "item_id": int(item),
                                    "rating": r, "ts": ts})
        return out

    def bot_ratings(self, bot: int, now: datetime) -> list[dict]:
        """A push attack: top ratings on the targets (once per bot), and filler ratings near
        each filler item's mean so the profile looks ordinary."""
        done = self.bot_rated.setdefault(int(bot), set())
        ts = now.isoformat()
        out: list[dict[str, Any]] = [
            {"user_id": int(bot), "item_id": int(t), "rating": 5, "ts": ts}
            for t in self.targets if int(t) not in done]
        fresh = [int(i) for i in self.filler_pool if int(i) not in done]
        fillers = self.rng.permutation(fresh)[: self.cfg.bot_fillers]
        for item in fillers:
            r = int(np.clip(round(float(self.item_mean.get(item, self.prefs.mu)) + 0.5
                                  + self.rng.normal(0, 0.5)), 1, 5))
            out.append({"user_id": int(bot), "item_id": int(item), "rating": r, "ts": ts})
        done.update(int(r["item_id"]) for r in out)
        return out

    def release_item(self, now: datetime) -> dict:
        """A new item: hidden taste vector near an existing item's (its genres too), fresh
        bias; nobody has interacted with it, so only content can surface it."""
        parent = int(self.rng.choice(self.prefs.item_ids))
        item_id = int(max(self.catalog.max(), max(self.released, default=0)) + 1)
        _, q = self.prefs._item(parent)
        self.prefs.add_item(item_id, float(self.rng.normal(0.0, 0.3)),
                            q + self.rng.normal(0, 0.5 * self.prefs.q_sd, q.shape))
        self.released.append(item_id)
        self.catalog = np.append(self.catalog, item_id)
        genres = self.item_rows["genres"].get(parent, []) if parent in self.item_rows.index \
            else []
        return {"item_id": item_id, "title": f"New release {item_id}", "year": now.year,
                "genres": list(genres) if isinstance(genres, (list, np.ndarray)) else [],
                "released_at": now.isoformat()}

    def ground_truth(self) -> dict:
        """Only tests and benchmarks read this: which users are bots, what they push."""
        return {"seed": self.cfg.seed, "bots": self.bots.tolist(),
                "targets": [int(t) for t in self.targets], "released": list(self.released)}
