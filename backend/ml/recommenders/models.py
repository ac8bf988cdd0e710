"""The models: popularity baseline, item-item kNN (variant A), diversity re-ranked kNN (B)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.ml.recommenders.base import Recommender, take_rows, top_k

CANDIDATES = 2.0  # cosine candidates per item, as a multiple of k, before shrinkage re-ranks


class Popularity(Recommender):
    """Most interacted-with items in the last `window_days` of the training data."""

    kind: ClassVar[str] = "popularity"

    def __init__(self, window_days: float = 30.0, **params: Any) -> None:
        super().__init__(window_days=window_days, **params)
        self.recent = np.zeros(0, dtype=np.float32)

    def _fit(self, frame: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        ts = pd.to_datetime(frame["ts"], utc=True)
        recent = (ts >= ts.max() - pd.Timedelta(days=self.params["window_days"])).to_numpy()
        counts = np.bincount(cols[recent], minlength=len(self.item_ids)).astype(np.float32)
        # all-time popularity breaks ties and ranks items unseen in the window
        self.recent = counts + self.popularity / max(float(self.popularity.sum()), 1.0)

    def _score_known(self, rows: np.ndarray) -> np.ndarray:
        return np.tile(self.recent, (len(rows), 1))

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"recent": self.recent}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.recent = arrays["recent"]


def interaction_weights(frame: pd.DataFrame, watch_weight: float, rating_weight: float,
                        neutral: float = 2.0) -> np.ndarray:
    """Per-row confidence: `watch_weight` for a watch plus `rating_weight` x how far the rating
    sits above `neutral` (ratings at or below neutral add nothing)."""
    watched = frame["watched"].to_numpy(dtype=bool) if "watched" in frame else \
        np.ones(len(frame), dtype=bool)
    rating = frame["rating"].to_numpy(dtype=np.float64) if "rating" in frame else \
        np.full(len(frame), np.nan)
    liked = np.clip((np.nan_to_num(rating, nan=neutral) - neutral) / (5.0 - neutral), 0, 1)
    return (watch_weight * watched + rating_weight * liked).astype(np.float32)


def shrunk_cosine_knn(x: sp.csr_matrix, k: int, shrinkage: float) -> sp.csr_matrix:
    """Top-k item neighbours by cosine with shrinkage: dot(i, j) / (|i| |j| + shrinkage).

    Candidates come from implicit's all-pairs kNN (C++, multithreaded) over unit-normalised
    item columns, 2k per item; shrinkage re-weights them and the best k stay. Memory stays
    O(items x k): no dense item x item matrix at any point.
    """
    from implicit.nearest_neighbours import all_pairs_knn

    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
    unit = (x @ sp.diags(1.0 / np.maximum(norms, 1e-12))).tocsr().astype(np.float64)
    cand = all_pairs_knn(unit, int(CANDIDATES * k) + 1, show_progress=False)
    # COO with rows out of order and unused slots left as zeros at (0, 0): drop those, group
    # by row with a (radix) argsort instead of a CSR conversion
    nonzero = np.flatnonzero(cand.data > 0)
    order = nonzero[np.argsort(cand.row[nonzero], kind="stable")]
    rows, cols = cand.row[order], cand.col[order]
    n = x.shape[1]
    counts = np.bincount(rows, minlength=n)
    starts = np.cumsum(counts) - counts
    denom = norms[rows] * norms[cols]
    shrunk = (cand.data[order] * denom / (denom + shrinkage)).astype(np.float32)
    shrunk[rows == cols] = 0.0  # an item is not its own neighbour
    # candidates of one item side by side: (items x 2k+1), then the k best per row
    width = max(int(counts.max(initial=0)), 1)
    pos = np.arange(len(cols)) - starts[rows]
    vals = np.zeros((n, width), dtype=np.float32)
    idx = np.zeros((n, width), dtype=np.int32)
    vals[rows, pos], idx[rows, pos] = shrunk, cols
    if width > k:
        best = np.argpartition(-vals, k - 1, axis=1)[:, :k]
        vals, idx = np.take_along_axis(vals, best, 1), np.take_along_axis(idx, best, 1)
    keep = vals > 0  # row-major selection keeps rows in order: CSR without a sort
    indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
    return sp.csr_matrix((vals[keep], idx[keep], indptr), shape=(n, n))


class ItemKNN(Recommender):
    """Variant A: item-item kNN; a user's score for item j = sum_i w(u, i) * sim(i, j)."""

    kind: ClassVar[str] = "item_knn"

    def __init__(self, neighbours: int = 50, shrinkage: float = 10.0, watch_weight: float = 1.0,
                 rating_weight: float = 1.0, **params: Any) -> None:
        super().__init__(neighbours=neighbours, shrinkage=shrinkage, watch_weight=watch_weight,
                         rating_weight=rating_weight, **params)
        self.weights = sp.csr_matrix((0, 0), dtype=np.float32)
        self.sim = sp.csr_matrix((0, 0), dtype=np.float32)

    def _fit(self, frame: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        w = interaction_weights(frame, self.params["watch_weight"], self.params["rating_weight"])
        shape = self.seen.shape
        self.weights = sp.csr_matrix((w, (rows, cols)), shape=shape)  # duplicates add up
        self.sim = shrunk_cosine_knn(self.weights, self.params["neighbours"],
                                     self.params["shrinkage"])

    def _score_known(self, rows: np.ndarray) -> np.ndarray:
        return (take_rows(self.weights, rows) @ self.sim).toarray()

    def _arrays(self) -> dict[str, np.ndarray]:
        w, s = self.weights.tocsr(), self.sim.tocsr()
        return {"w_data": w.data, "w_indices": w.indices, "w_indptr": w.indptr,
                "s_data": s.data, "s_indices": s.indices, "s_indptr": s.indptr}

    def _restore(self, a: dict[str, np.ndarray]) -> None:
        n_users, n_items = len(self.user_ids), len(self.item_ids)
        self.weights = sp.csr_matrix((a["w_data"], a["w_indices"], a["w_indptr"]),
                                     shape=(n_users, n_items))
        self.sim = sp.csr_matrix((a["s_data"], a["s_indices"], a["s_indptr"]),
                                 shape=(n_items, n_items))


class DiversityKNN(ItemKNN):
    """Variant B: A's scores re-ranked for diversity and the long tail.

    - MMR (Carbonell & Goldstein 1998): pick argmax lambda * rel(i) - (1 - lambda) *
      max_{j picked} sim(i, j), with rel scaled to [0, 1] over the candidates and sim the
      content (genre/year) cosine, or the kNN similarity without item metadata;
    - exploration: every score is multiplied by (1 + exposure(i)) ** -exploration before
      the candidates are chosen, so items with little exposure (training interactions, or
      recommendation counts given to `set_exposure`) can compete (popularity debiasing, cf.
      Abdollahpouri et al. 2017);
    - `tail_slots` of the k positions are reserved for long-tail items: the bottom
      `tail_share` of the catalog by popularity.
    `mmr_lambda`, `exploration` and `tail_slots` change at run time through `set_params`.
    """

    kind: ClassVar[str] = "diversity_knn"
    RUNTIME = ("mmr_lambda", "exploration", "tail_slots")

    def __init__(self, mmr_lambda: float = 0.9, exploration: float = 0.7, tail_slots: int = 2,
                 tail_share: float = 0.8, candidates: int = 100, **params: Any) -> None:
        super().__init__(mmr_lambda=mmr_lambda, exploration=exploration, tail_slots=tail_slots,
                         tail_share=tail_share, candidates=candidates, **params)
        self.exposure = np.zeros(0, dtype=np.float32)
        self.tail = np.zeros(0, dtype=bool)

    def _fit(self, frame: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        super()._fit(frame, rows, cols)
        self.exposure = self.popularity.copy()
        self.tail = long_tail_mask(self.popularity, self.params["tail_share"])

    def set_params(self, **changes: Any) -> None:
        unknown = set(changes) - set(self.RUNTIME)
        if unknown:
            raise ValueError(f"not changeable at run time: {sorted(unknown)}")
        self.params.update(changes)

    def set_exposure(self, counts: np.ndarray) -> None:
        self.exposure = np.asarray(counts, dtype=np.float32)

    def _score_known(self, rows: np.ndarray) -> np.ndarray:
        damp = (1.0 + self.exposure) ** -float(self.params["exploration"])
        return super()._score_known(rows) * damp[None, :]

    def _pair_sim(self, cand: np.ndarray) -> np.ndarray:
        if self.features is not None:
            f = self.features[cand]
            return f @ f.T
        return self.sim[cand][:, cand].toarray()

    def _finalise(self, scores: np.ndarray, k: int) -> list[int]:
        p = self.params
        cand = top_k(scores, max(p["candidates"], k))
        if len(cand) == 0:
            return []
        rel = scores[cand]
        span = rel.max() - rel.min()
        rel = (rel - rel.min()) / span if span > 0 else np.ones_like(rel)
        sim = self._pair_sim(cand)
        tail = self.tail[cand]
        picked: list[int] = []
        max_sim = np.zeros(len(cand))
        free = np.ones(len(cand), dtype=bool)
        tail_left = min(int(p["tail_slots"]), int(tail.sum()), k)
        lam = float(p["mmr_lambda"])
        while len(picked) < min(k, len(cand)):
            slots_left = min(k, len(cand)) - len(picked)
            allowed = free & tail if tail_left >= slots_left else free
            mmr = np.where(allowed, lam * rel - (1 - lam) * max_sim, -np.inf)
            best = int(np.argmax(mmr))
            picked.append(best)
            free[best] = False
            tail_left -= int(tail[best])
            max_sim = np.maximum(max_sim, sim[best])
        return self.item_ids[cand[picked]].tolist()

    def _arrays(self) -> dict[str, np.ndarray]:
        return super()._arrays() | {"exposure": self.exposure, "tail": self.tail}

    def _restore(self, a: dict[str, np.ndarray]) -> None:
        super()._restore(a)
        self.exposure, self.tail = a["exposure"], a["tail"].astype(bool)


def long_tail_mask(popularity: np.ndarray, tail_share: float) -> np.ndarray:
    """True for the `tail_share` least popular items (ties broken by index)."""
    order = np.lexsort((np.arange(len(popularity)), popularity))
    mask = np.zeros(len(popularity), dtype=bool)
    mask[order[: int(round(tail_share * len(popularity)))]] = True
    return mask
