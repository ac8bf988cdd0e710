"""Offline ranking and beyond-accuracy metrics. Relevance is binary (held-out interactions).

Definitions follow RecBole's metric docs (recbole.readthedocs.io, `recbole.evaluator.metrics`)
unless noted; every list is a ranked list of item ids, best first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def ndcg_at_k(recs: Sequence[int], relevant: set[int], k: int = 10) -> float:
    """DCG@k / IDCG@k with DCG = sum_{i<k} rel_i / log2(i + 2) and the ideal list putting
    min(|relevant|, k) hits first (RecBole NDCG). 0 when nothing is relevant."""
    if not relevant:
        return 0.0
    gains = [1.0 / np.log2(i + 2) for i, item in enumerate(recs[:k]) if item in relevant]
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(relevant), k)))
    return float(sum(gains) / ideal)


def recall_at_k(recs: Sequence[int], relevant: set[int], k: int = 10) -> float:
    """|top-k ∩ relevant| / |relevant| (RecBole Recall)."""
    if not relevant:
        return 0.0
    return len(set(recs[:k]) & relevant) / len(relevant)


def average_precision_at_k(recs: Sequence[int], relevant: set[int], k: int = 10) -> float:
    """sum_{i<k} P@(i+1) * rel_i / min(|relevant|, k) (RecBole MAP, per user)."""
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for i, item in enumerate(recs[:k]):
        if item in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / min(len(relevant), k)


def catalog_coverage(lists: Iterable[Sequence[int]], catalog_size: int) -> float:
    """Share of the catalog that appears in at least one list (Ge et al. 2010)."""
    shown: set[int] = set()
    for recs in lists:
        shown.update(recs)
    return len(shown) / catalog_size if catalog_size else 0.0


def exposure_counts(lists: Iterable[Sequence[int]], catalog: Sequence[int]) -> np.ndarray:
    """How often each catalog item was recommended (zero for never), in catalog order."""
    index = {int(item): i for i, item in enumerate(catalog)}
    counts = np.zeros(len(catalog), dtype=np.float64)
    for recs in lists:
        for item in recs:
            j = index.get(int(item))
            if j is not None:
                counts[j] += 1
    return counts


def gini(counts: np.ndarray) -> float:
    """Gini index of item exposure over the full catalog, never-recommended items counted as
    zero: G = sum_i (2i - n - 1) x_(i) / (n sum x) with x sorted ascending, i = 1..n
    (RecBole GiniIndex; 0 = equal exposure, -> 1 = all on one item)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def lorenz(counts: np.ndarray, points: int = 21) -> list[float]:
    """The Lorenz curve of exposure over the full catalog: at each of `points` equally
    spaced item shares p in [0, 1], the share of all exposure held by the least-exposed
    fraction p of items (linear between items; Lorenz 1905). 1 - 2 x its area is the Gini
    index as n grows. Empty without exposure."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    if len(x) == 0 or x.sum() == 0:
        return []
    cum = np.concatenate([[0.0], np.cumsum(x) / x.sum()])
    share = np.linspace(0, 1, len(cum))
    return [float(v) for v in np.interp(np.linspace(0, 1, points), share, cum)]


def novelty(lists: Iterable[Sequence[int]], popularity: Mapping[int, float],
            n_users: int) -> float:
    """Mean self-information -log2(pop(i) / n_users) of recommended items (Zhou et al.
    2010, PNAS); an item nobody interacted with counts as popularity 1."""
    values = [-np.log2(max(popularity.get(int(i), 0.0), 1.0) / n_users)
              for recs in lists for i in recs]
    return float(np.mean(values)) if values else 0.0


def intra_list_diversity(lists: Iterable[Sequence[int]], features: Mapping[int, np.ndarray],
                         ) -> float:
    """Mean over lists of the mean pairwise cosine distance 1 - cos(f_i, f_j) between the
    items of a list (Ziegler et al. 2005); lists with fewer than two items are skipped."""
    per_list = []
    for recs in lists:
        vecs = [features[i] for i in recs if i in features]
        if len(vecs) < 2:
            continue
        m = np.asarray(vecs, dtype=np.float64)
        m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
        sim = m @ m.T
        n = len(m)
        per_list.append(1.0 - (sim.sum() - np.trace(sim)) / (n * (n - 1)))
    return float(np.mean(per_list)) if per_list else 0.0


def aplt(lists: Iterable[Sequence[int]], tail: set[int]) -> float:
    """Average percentage of long-tail items: mean over lists of |list ∩ tail| / |list|
    (Abdollahpouri et al. 2019)."""
    shares = [len([i for i in recs if i in tail]) / len(recs) for recs in lists if recs]
    return float(np.mean(shares)) if shares else 0.0
