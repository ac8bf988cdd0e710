"""One API for every recommender, and what they share: id maps, history, cold start, files.

Input to `fit` is an interactions frame with columns `user_id`, `item_id`, `ts` and optional
`rating` (NaN where the interaction is a watch only) and `watched` (bool). Optional `items`
(item_id, genres, year) and `users` (user_id, age, gender) frames feed the cold start:
- a user with no history gets the items popular in their demographic group (gender x age
  band) blended with content similarity (genres, year) to that group's favourites, or global
  popularity when the user is unknown;
- an item with no interactions can still be recommended: it scores by content similarity to
  the items the user interacted with.
Model files are `.npz` (allow_pickle=False) plus `model.json`: no pickle anywhere.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.ml.indexing import dense_index

AGE_BANDS = (0, 18, 25, 35, 45, 56, 200)


def item_features(items: pd.DataFrame, item_ids: np.ndarray) -> np.ndarray:
    """Row-normalised content vectors: one-hot genres plus a scaled release-year column."""
    frame = items.drop_duplicates("item_id").set_index("item_id").reindex(item_ids)
    exploded = frame["genres"].explode().dropna()
    codes, names = pd.factorize(exploded, sort=True)
    feats = np.zeros((len(item_ids), len(names) + 1), dtype=np.float32)
    feats[item_ids.searchsorted(exploded.index.to_numpy()), codes] = 1.0
    years = pd.to_numeric(frame["year"], errors="coerce").to_numpy(dtype=np.float64)
    if np.isfinite(years).any():
        lo, hi = np.nanmin(years), np.nanmax(years)
        feats[:, -1] = np.nan_to_num(0.5 * (years - lo) / max(hi - lo, 1.0))
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    return feats / np.maximum(norms, 1e-9)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest finite scores, best first; ties broken by index (stable)."""
    if 0 < k < len(scores):
        # one partition over all scores (negated: -inf and NaN go last); only when one of
        # the k picked is not finite (fewer than k finite) take the careful path
        part = np.argpartition(-scores, k - 1)[:k]
        if np.isfinite(scores[part]).all():
            return part[np.lexsort((part, -scores[part]))]
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) == 0:
        return finite
    k = min(k, len(finite))
    part = finite[np.argpartition(-scores[finite], k - 1)[:k]] if k < len(finite) else finite
    return part[np.lexsort((part, -scores[part]))]


def take_rows(m: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """`m[rows]`, the same rows in the same order, without scipy's fancy indexing, which
    costs ~45 us a call: a served request scores one user, or a few."""
    spans = [slice(m.indptr[r], m.indptr[r + 1]) for r in rows]
    if not spans:
        return sp.csr_matrix((0, m.shape[1]), dtype=m.dtype)
    indptr = np.zeros(len(spans) + 1, dtype=m.indptr.dtype)
    np.cumsum([sl.stop - sl.start for sl in spans], out=indptr[1:])
    return sp.csr_matrix((np.concatenate([m.data[sl] for sl in spans]),
                          np.concatenate([m.indices[sl] for sl in spans]), indptr),
                         shape=(len(spans), m.shape[1]))


class Recommender(ABC):
    """fit / recommend / recommend_many / save / load, shared by every model."""

    kind: ClassVar[str]
    by_kind: ClassVar[dict[str, type[Recommender]]] = {}  # every model class, for `load`

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Recommender.by_kind[cls.kind] = cls

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)
        self.user_ids = np.zeros(0, dtype=np.int64)
        self.item_ids = np.zeros(0, dtype=np.int64)
        self.seen = sp.csr_matrix((0, 0), dtype=np.float32)
        self.popularity = np.zeros(0, dtype=np.float32)
        self.features: np.ndarray | None = None
        self.group_of_user: dict[int, int] = {}
        self.group_pop = np.zeros((0, 0), dtype=np.float32)
        self._uidx: dict[int, int] = {}

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, interactions: pd.DataFrame, items: pd.DataFrame | None = None,
            users: pd.DataFrame | None = None) -> Self:
        frame = interactions
        self.user_ids, rows = dense_index(frame["user_id"].to_numpy(dtype=np.int64))
        self.item_ids, cols = dense_index(
            frame["item_id"].to_numpy(dtype=np.int64),
            None if items is None else items["item_id"].to_numpy(dtype=np.int64))
        self._uidx = dict(zip(self.user_ids.tolist(), range(len(self.user_ids)), strict=True))
        shape = (len(self.user_ids), len(self.item_ids))
        self.seen = sp.csr_matrix((np.ones(len(frame), np.float32), (rows, cols)), shape=shape)
        self.seen.data[:] = 1.0  # duplicates summed by the constructor: back to a 0/1 mask
        self.popularity = np.asarray(self.seen.sum(axis=0)).ravel().astype(np.float32)
        self.features = None if items is None else item_features(items, self.item_ids)
        self._fit_groups(users)
        self._fit(frame, rows, cols)
        return self

    def _fit_groups(self, users: pd.DataFrame | None) -> None:
        self.group_of_user = {}
        if users is None or users.empty:
            self.group_pop = np.zeros((0, len(self.item_ids)), dtype=np.float32)
            return
        bands = np.searchsorted(AGE_BANDS, users["age"].to_numpy(dtype=float), side="right") - 1
        groups = np.where(users["gender"].to_numpy() == "F", 0, 1) * len(AGE_BANDS) + bands
        self.group_of_user = dict(zip(users["user_id"].astype(int).tolist(), groups.tolist(),
                                      strict=True))
        row_group = np.array([self.group_of_user.get(int(u), -1) for u in self.user_ids])
        known = np.flatnonzero(row_group >= 0)
        membership = sp.csr_matrix((np.ones(len(known), np.float32), (row_group[known], known)),
                                   shape=(2 * len(AGE_BANDS), len(self.user_ids)))
        self.group_pop = np.asarray((membership @ self.seen).todense(), dtype=np.float32)

    @abstractmethod
    def _fit(self, frame: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        """Model-specific training on the interactions (rows/cols are matrix indices)."""

    # -- scoring ---------------------------------------------------------------------------

    @abstractmethod
    def _score_known(self, rows: np.ndarray) -> np.ndarray:
        """Dense scores (len(rows) x n_items) for users with history."""

    def _cold_scores(self, user_id: int) -> np.ndarray:
        pop = self.popularity / max(float(self.popularity.max(initial=0)), 1.0)
        g = self.group_of_user.get(int(user_id))
        if g is None or self.group_pop.shape[0] == 0 or self.group_pop[g].sum() == 0:
            return pop
        gp = self.group_pop[g] / self.group_pop[g].max()
        score = gp + 0.1 * pop
        if self.features is not None:
            favourites = np.argsort(-gp)[:50]
            profile = self.features[favourites].mean(axis=0)
            score = score + 0.2 * (self.features @ profile)
        return score

    def _new_item_boost(self, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Content similarity for never-seen items, so a new item can be recommended at all."""
        fresh = np.flatnonzero(self.popularity == 0)
        if self.features is None or len(fresh) == 0:
            return scores
        hist = take_rows(self.seen, rows)
        counts = np.asarray(hist.sum(axis=1)).reshape(-1, 1)
        profiles = np.asarray(hist @ self.features) / np.maximum(counts, 1)
        top = np.nanmax(np.where(np.isfinite(scores), scores, np.nan), axis=1, initial=0.0)
        boost = profiles @ self.features[fresh].T  # cosine-like, in [0, 1]
        scores[:, fresh] = self.params.get("new_item_weight", 0.5) * boost * \
            np.maximum(top, 1e-3)[:, None]
        return scores

    def recommend(self, user_id: int, k: int = 10, exclude_seen: bool = True) -> list[int]:
        return self.recommend_many([user_id], k, exclude_seen)[int(user_id)]

    def recommend_many(self, user_ids: Iterable[int], k: int = 10, exclude_seen: bool = True,
                       batch: int = 512) -> dict[int, list[int]]:
        users = [int(u) for u in user_ids]
        out: dict[int, list[int]] = {}
        known = [u for u in users if u in self._uidx]
        for start in range(0, len(known), batch):
            chunk = known[start:start + batch]
            rows = np.array([self._uidx[u] for u in chunk])
            scores = self._new_item_boost(rows, self._score_known(rows).astype(np.float64))
            if exclude_seen:
                hist = take_rows(self.seen, rows)
                scores[np.repeat(np.arange(len(rows)), np.diff(hist.indptr)),
                       hist.indices] = -np.inf
            for u, row_scores in zip(chunk, scores, strict=True):
                out[u] = self._finalise(row_scores, k)
        for u in users:
            if u not in out:
                out[u] = self._finalise(self._cold_scores(u).astype(np.float64), k)
        return out

    def _finalise(self, scores: np.ndarray, k: int) -> list[int]:
        """Turn one user's scores into k item ids (re-rankers override this)."""
        return self.item_ids[top_k(scores, k)].tolist()

    # -- persistence -----------------------------------------------------------------------

    @abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]:
        """Model-specific arrays to store in `model.npz`."""

    @abstractmethod
    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Model-specific arrays back from `model.npz`."""

    def save(self, directory: Path) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        seen = self.seen.tocsr()
        groups = np.array(sorted(self.group_of_user.items()), dtype=np.int64).reshape(-1, 2)
        arrays = {
            "user_ids": self.user_ids, "item_ids": self.item_ids,
            "seen_indptr": seen.indptr, "seen_indices": seen.indices,
            "popularity": self.popularity, "group_pop": self.group_pop, "groups": groups,
            "features": self.features if self.features is not None else np.zeros((0, 0)),
        } | {f"m_{k}": v for k, v in self._arrays().items()}
        np.savez(directory / "model.npz", **arrays)
        (directory / "model.json").write_text(json.dumps(
            {"kind": self.kind, "params": self.params}, indent=2, sort_keys=True))
        return [directory / "model.npz", directory / "model.json"]

    @classmethod
    def load(cls, directory: Path) -> Recommender:
        meta = json.loads((Path(directory) / "model.json").read_text())
        model: Recommender = Recommender.by_kind[meta["kind"]](**meta["params"])
        with np.load(Path(directory) / "model.npz", allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        model.user_ids, model.item_ids = a["user_ids"], a["item_ids"]
        model._uidx = {int(u): i for i, u in enumerate(model.user_ids)}
        indices = a["seen_indices"]
        model.seen = sp.csr_matrix((np.ones(len(indices), np.float32), indices,
                                    a["seen_indptr"]),
                                   shape=(len(model.user_ids), len(model.item_ids)))
        model.popularity, model.group_pop = a["popularity"], a["group_pop"]
        model.group_of_user = {int(u): int(g) for u, g in a["groups"]}
        model.features = a["features"] if a["features"].size else None
        model._restore({k[2:]: v for k, v in a.items() if k.startswith("m_")})
        return model
