"""Integer id -> dense position maps, shared by the models and the analytics."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def dense_index(values: np.ndarray, extra: np.ndarray | None = None,
                dtype: type[np.integer] = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids of `values` and `extra`, position of each value among them).

    What `np.unique(..., return_inverse=True)` gives, by a presence table when the ids are
    small non-negative integers (MovieLens, the simulator): O(n) instead of a sort, which is
    a tenth of a kNN fit. `dtype`: of the positions (int32 halves a large log's array)."""
    parts = [values] if extra is None else [values, extra]
    nonempty = [p for p in parts if len(p)]
    n = sum(len(p) for p in parts)
    if nonempty:
        lo = min(int(p.min()) for p in nonempty)
        hi = max(int(p.max()) for p in nonempty)
        if lo >= 0 and hi < 4 * n + 1024:
            present = np.zeros(hi + 1, dtype=bool)
            for p in nonempty:
                present[p] = True
            ids = np.flatnonzero(present)
            position: np.ndarray = (np.cumsum(present) - 1).astype(dtype)
            return ids, position[values]
    ids = np.unique(np.concatenate(parts)) if n else np.zeros(0, dtype=np.int64)
    return ids, np.searchsorted(ids, values).astype(dtype, copy=False)


def incidence(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
    """0/1 users x items matrix of (user, item) pairs, repeats counted once; row i is user
    `ids[i]` (sorted). What the set-similarity measures (Jaccard, DegSim) work on."""
    ids, rows = dense_index(np.asarray(users, dtype=np.int64))
    _, cols = dense_index(np.asarray(items, dtype=np.int64))
    shape = (len(ids), int(cols.max()) + 1 if len(cols) else 0)
    w = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)
    w.sum_duplicates()
    w.data[:] = 1.0
    return ids, w
