"""ALS: matrix factorisation on implicit feedback (Hu, Koren & Volinsky 2008), via `implicit`.

The kNN models only relate items that share users; a latent-factor model also ranks items
two or more hops away, and its scores cost one (factors)-long dot product per item.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.ml.recommenders.base import Recommender
from backend.ml.recommenders.models import interaction_weights


class ALS(Recommender):
    """score(u, i) = user_factors[u] . item_factors[i], fitted by alternating least squares.

    Confidence of an interaction = `alpha` x the kNN models' `interaction_weights` (watch
    plus how much the rating is above neutral); every other (user, item) pair counts as a
    0 with confidence 1, implicit's convention. An interaction whose weight is 0 (a low
    rating, no watch) is left out, so it counts like an unobserved pair.

    Deterministic for a fixed `seed`: the factors start from it, and BLAS runs on one
    thread during the fit (implicit asks for that: OpenBLAS threads inside its solver
    oversubscribe the cores); `num_threads` is implicit's own thread count.
    """

    kind: ClassVar[str] = "als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, iterations: int = 15,
                 alpha: float = 1.0, watch_weight: float = 1.0, rating_weight: float = 1.0,
                 num_threads: int = 1, seed: int = 0, **params: Any) -> None:
        super().__init__(factors=factors, regularization=regularization, iterations=iterations,
                         alpha=alpha, watch_weight=watch_weight, rating_weight=rating_weight,
                         num_threads=num_threads, seed=seed, **params)
        self.user_factors = np.zeros((0, factors), dtype=np.float32)
        self.item_factors = np.zeros((0, factors), dtype=np.float32)

    def confidence(self, frame: pd.DataFrame, rows: np.ndarray,
                   cols: np.ndarray) -> sp.csr_matrix:
        """users x items confidences, duplicates summed, zero weights dropped."""
        p = self.params
        w = p["alpha"] * interaction_weights(frame, p["watch_weight"], p["rating_weight"])
        c = sp.csr_matrix((w.astype(np.float32), (rows, cols)), shape=self.seen.shape)
        c.eliminate_zeros()
        return c

    def _fit(self, frame: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        p = self.params
        with threadpool_limits(1, "blas"):  # before the constructor: it checks BLAS threads
            als = AlternatingLeastSquares(
                factors=int(p["factors"]), regularization=float(p["regularization"]),
                alpha=1.0, dtype=np.float32, iterations=int(p["iterations"]),
                num_threads=int(p["num_threads"]), random_state=int(p["seed"]))
            # alpha is already in the confidences (so `confidence` shows what is fitted)
            als.fit(self.confidence(frame, rows, cols), show_progress=False)
        self.user_factors = np.ascontiguousarray(als.user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(als.item_factors, dtype=np.float32)

    def _score_known(self, rows: np.ndarray) -> np.ndarray:
        return self.user_factors[rows] @ self.item_factors.T

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.user_factors = arrays["user_factors"]
        self.item_factors = arrays["item_factors"]
