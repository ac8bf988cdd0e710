"""Rating-spam (shilling) detectors over one window of rating events.

Input frame columns: user_id, item_id, rating, ts. Every detector returns a boolean Series
indexed by user_id; `combined` is what the platform acts on (the quarantine list).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from backend.ml.indexing import incidence

MAD_SCALE = 0.6745  # = Phi^-1(0.75): makes the MAD a consistent estimate of sigma


def three_sigma(counts: pd.Series, k: float = 3.0) -> pd.Series:
    """The milestone report's rule: flag a user whose rating count exceeds mean + k x std of
    all users' counts (population std). Weak by design: the attackers inflate both."""
    mu, sd = counts.mean(), counts.std(ddof=0)
    return counts > mu + k * sd


def robust_z(values: pd.Series) -> pd.Series:
    """Modified z-score 0.6745 (x - median) / MAD (Iglewicz & Hoaglin 1993); a zero MAD
    falls back to the mean absolute deviation x 1.2533 (both consistent for sigma)."""
    med = values.median()
    mad = (values - med).abs().median()
    if mad > 0:
        return MAD_SCALE * (values - med) / mad
    mean_ad = (values - med).abs().mean()
    if mean_ad == 0:
        return pd.Series(0.0, index=values.index)
    return (values - med) / (1.2533 * mean_ad)


def rdma(ratings: pd.DataFrame) -> pd.Series:
    """Rating Deviation from Mean Agreement (Chirita, Nejdl & Zamfir 2005):
    RDMA_u = (1 / N_u) sum_{i in I_u} |r_ui - mean_i| / NR_i, with mean_i the item's mean
    rating and NR_i its number of ratings in the window. High for users who disagree with the
    crowd on rarely rated items, which is what a push attack on a target does."""
    item = ratings.groupby("item_id")["rating"].agg(["mean", "size"])
    r = ratings.join(item, on="item_id")
    dev = (r["rating"] - r["mean"]).abs() / r["size"]
    return dev.groupby(r["user_id"]).mean()


def degsim(ratings: pd.DataFrame, k: int = 5, only: np.ndarray | None = None) -> pd.Series:
    """Degree of Similarity with top Neighbours (Chirita, Nejdl & Zamfir 2005): the mean
    similarity of a user's rated-item set to its `k` most similar users' (Jaccard here).
    Attack profiles are made from one template, so bots are each other's near-copies.
    Computed for the users in `only` (default all): memory is |only| x users."""
    users, w = incidence(ratings["user_id"].to_numpy(), ratings["item_id"].to_numpy())
    if len(users) < 2:
        return pd.Series(0.0, index=users)
    pick = np.arange(len(users)) if only is None else np.searchsorted(users, only)
    inter = (w[pick] @ w.T).toarray()
    size = np.diff(w.indptr).astype(float)
    jac = inter / (size[pick][:, None] + size[None, :] - inter)
    jac[np.arange(len(pick)), pick] = -1.0  # not one's own neighbour
    k = max(1, min(k, len(users) - 1))
    top = -np.partition(-jac, k - 1, axis=1)[:, :k]
    return pd.Series(top.mean(axis=1), index=users[pick])


def burst_rate(ratings: pd.DataFrame, bucket: str = "1min") -> pd.Series:
    """Peak number of ratings a user posted within one `bucket` of time."""
    ts = pd.to_datetime(ratings["ts"], utc=True).dt.floor(bucket)
    return ratings.groupby([ratings["user_id"], ts]).size().groupby(level=0).max()


COLUMNS = ["count", "rdma", "degsim", "burst", "three_sigma", "robust_count", "robust_rdma",
           "robust_degsim", "robust_burst", "combined"]


def detect(ratings: pd.DataFrame, z: float = 3.5, bucket: str = "1min",
           sample: int = 3000) -> pd.DataFrame:
    """Per-user features and flags: three-sigma on counts; robust z (> `z`) on counts, RDMA,
    DegSim and burst rate; `combined` = a volume outlier (count or burst) whose profile is
    also abnormal (RDMA: disagrees with the crowd; or DegSim: a near-copy of other raters).

    Volume alone flags honest heavy users, RDMA alone honest contrarians, DegSim alone small
    groups of like-minded fans; a shilling profile is loud and abnormal at once (Chirita et
    al. 2005 combine their features the same way)."""
    if ratings.empty:
        return pd.DataFrame(columns=COLUMNS)
    counts = ratings.groupby("user_id").size().astype(float)
    burst = burst_rate(ratings, bucket).astype(float)
    # DegSim on every user up to `sample` of them; beyond, on a seeded sample (for its median
    # and MAD) plus the volume outliers, the only users the combined flag can pick
    users = counts.index.to_numpy()
    only = None
    if len(users) > sample:
        loud = users[(robust_z(counts) > z).to_numpy() | (robust_z(burst) > z).to_numpy()]
        rng = np.random.default_rng(0)
        only = np.union1d(rng.choice(users, sample, replace=False), loud)
    frame = pd.DataFrame({"count": counts, "rdma": rdma(ratings),
                          "degsim": degsim(ratings, only=only), "burst": burst})
    frame["three_sigma"] = three_sigma(frame["count"])
    for col in ("count", "rdma", "degsim", "burst"):
        frame[f"robust_{col}"] = (robust_z(frame[col]) > z).fillna(False).astype(bool)
    frame["combined"] = ((frame["robust_count"] | frame["robust_burst"])
                         & (frame["robust_rdma"] | frame["robust_degsim"]))
    frame.index.name = "user_id"
    return frame


def precision_recall(flagged: set[int], truth: set[int]) -> tuple[float, float]:
    """(precision, recall) of a flagged set against the ground-truth bots."""
    tp = len(flagged & truth)
    precision = tp / len(flagged) if flagged else (1.0 if not truth else 0.0)
    recall = tp / len(truth) if truth else 1.0
    return float(precision), float(recall)
