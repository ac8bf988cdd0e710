"""dense_index gives what np.unique(return_inverse=True) gives, on both of its paths."""

from __future__ import annotations

import numpy as np
import pytest

from backend.ml.indexing import dense_index


@pytest.mark.parametrize("values, extra", [
    (np.array([5, 3, 5, 9]), None),                       # small ids: presence table
    (np.array([5, 3, 5, 9]), np.array([1, 3])),
    (np.array([10**12, 3, 10**12]), np.array([7])),        # huge ids: sort path
    (np.array([-2, 4, -2]), None),                         # negative ids: sort path
    (np.array([], dtype=np.int64), np.array([4, 2])),
])
def test_dense_index_matches_unique(values, extra):
    ids, pos = dense_index(values, extra)
    both = values if extra is None else np.concatenate([values, extra])
    assert ids.tolist() == np.unique(both).tolist()
    assert ids[pos].tolist() == values.tolist()
