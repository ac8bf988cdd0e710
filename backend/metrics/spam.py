"""Rating-spam (shilling) detectors over one window of rating events.

Input frame columns: user_id, item_id, rating, ts. Every detector returns a boolean Series
indexed by user_id; `combined` is what the platform acts on (the quarantine list).
"""

from __future__ import annotations

import pandas as pd

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


def burst_rate(ratings: pd.DataFrame, bucket: str = "1min") -> pd.Series:
    """Peak number of ratings a user posted within one `bucket` of time."""
    ts = pd.to_datetime(ratings["ts"], utc=True).dt.floor(bucket)
    return ratings.groupby([ratings["user_id"], ts]).size().groupby(level=0).max()


def detect(ratings: pd.DataFrame, z: float = 3.5, bucket: str = "1min") -> pd.DataFrame:
    """Per-user features and flags: three-sigma on counts; robust z (|z| > `z`) on counts,
    RDMA and burst rate; `combined` = a robust outlier on RDMA and on volume (count or burst).

    Volume alone flags honest heavy users and RDMA alone flags honest contrarians; a shilling
    profile is both (Chirita et al. 2005 combine the same way)."""
    if ratings.empty:
        return pd.DataFrame(columns=["count", "rdma", "burst", "three_sigma", "robust_count",
                                     "robust_rdma", "robust_burst", "combined"])
    counts = ratings.groupby("user_id").size().astype(float)
    frame = pd.DataFrame({"count": counts, "rdma": rdma(ratings),
                          "burst": burst_rate(ratings, bucket).astype(float)})
    frame["three_sigma"] = three_sigma(frame["count"])
    frame["robust_count"] = robust_z(frame["count"]) > z
    frame["robust_rdma"] = robust_z(frame["rdma"]) > z
    frame["robust_burst"] = robust_z(frame["burst"]) > z
    frame["combined"] = frame["robust_rdma"] & (frame["robust_count"] | frame["robust_burst"])
    frame.index.name = "user_id"
    return frame


def precision_recall(flagged: set[int], truth: set[int]) -> tuple[float, float]:
    """(precision, recall) of a flagged set against the ground-truth bots."""
    tp = len(flagged & truth)
    precision = tp / len(flagged) if flagged else (1.0 if not truth else 0.0)
    recall = tp / len(truth) if truth else 1.0
    return float(precision), float(recall)
