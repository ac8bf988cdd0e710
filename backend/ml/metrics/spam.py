"""Rating-spam (shilling) detectors over one window of rating events.

Input frame columns: user_id, item_id, rating, ts. Every detector returns a boolean Series
indexed by user_id; `combined` is what the platform acts on (the quarantine list).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from backend.ml.indexing import dense_index, incidence

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


def robust_limit(values: pd.Series, z: float) -> float | None:
    """The value whose `robust_z` is `z` (same fallback): what robust flags are above."""
    med = values.median()
    mad = (values - med).abs().median()
    if mad > 0:
        return float(med + z * mad / MAD_SCALE)
    mean_ad = (values - med).abs().mean()
    return float(med + z * 1.2533 * mean_ad) if mean_ad > 0 else None


def rdma(ratings: pd.DataFrame) -> pd.Series:
    """Rating Deviation from Mean Agreement (Chirita, Nejdl & Zamfir 2005):
    RDMA_u = (1 / N_u) sum_{i in I_u} |r_ui - mean_i| / NR_i, with mean_i the item's mean
    rating and NR_i its number of ratings in the window. High for users who disagree with the
    crowd on rarely rated items, which is what a push attack on a target does."""
    item = ratings.groupby("item_id")["rating"].agg(["mean", "size"])
    r = ratings.join(item, on="item_id")
    dev = (r["rating"] - r["mean"]).abs() / r["size"]
    return dev.groupby(r["user_id"]).mean()


CHUNK_ROWS = 256  # users whose similarities the sparse layout holds at once
DENSE_CELLS = 1 << 23  # similarities the dense layout holds at once (users x all users)
DENSE_AT = 1 / 8  # the dense layout once a user's co-raters are this share of all users
HEAVY_SHARE = 1 / 16  # in it, items rated by this share of users overlap by one BLAS product
SEGMENT = 64  # entries per segment whose maximum bounds a row's k-th largest similarity
FLOOR_SAMPLE = 8192  # users whose similarities give the dense layout its floors


def degsim(ratings: pd.DataFrame, k: int = 5, only: np.ndarray | None = None) -> pd.Series:
    """Degree of Similarity with top Neighbours (Chirita, Nejdl & Zamfir 2005): the mean
    similarity of a user's rated-item set to its `k` most similar users' (Jaccard here).
    Attack profiles are made from one template, so bots are each other's near-copies.
    Computed for the users in `only` (default all), a chunk of them at a time, in one of two
    layouts with the same figures: sparse over co-raters while they are few (memory grows
    with co-raters, not |only| x users); dense once most users are co-raters (many ratings
    per user), where a sparse product would be as large and far slower."""
    users, w = incidence(ratings["user_id"].to_numpy(), ratings["item_id"].to_numpy())
    if len(users) < 2:
        return pd.Series(0.0, index=users)
    pick = np.arange(len(users)) if only is None else np.searchsorted(users, only)
    k = max(1, min(k, len(users) - 1))
    degree = np.bincount(w.indices, minlength=w.shape[1]).astype(float)
    products = w[pick] @ degree  # per user: entries of its sparse product, >= its co-raters
    if len(pick) and products.mean() >= DENSE_AT * len(users):
        out = _degsim_dense(w, pick, degree, k)
    else:
        out = _degsim_sparse(w, pick, k)
    return pd.Series(out, index=users[pick])


def _degsim_sparse(w: sp.csr_matrix, pick: np.ndarray, k: int) -> np.ndarray:
    """DegSim of the users `pick` over their co-raters only: a row's top k are its k
    largest entries, padded with the zeros of everyone else (its own entry counts as one
    of those zeros: there are always k others)."""
    size = np.diff(w.indptr).astype(float)
    wt = w.T.tocsr()
    out = np.empty(len(pick))
    for lo in range(0, len(pick), CHUNK_ROWS):
        rows = pick[lo:lo + CHUNK_ROWS]
        inter = (w[rows] @ wt).tocsr()
        row = np.repeat(np.arange(len(rows)), np.diff(inter.indptr))
        jac = inter.data / (size[rows][row] + size[inter.indices] - inter.data)
        jac[inter.indices == rows[row]] = 0.0
        keep = np.flatnonzero((jac >= _kth_floor(jac, inter.indptr, k)[row]) & (jac > 0))
        out[lo:lo + len(rows)] = top_k_sums(row[keep], jac[keep], len(rows), k) / k
    return out


def _degsim_dense(w: sp.csr_matrix, pick: np.ndarray, degree: np.ndarray, k: int,
                  ) -> np.ndarray:
    """DegSim of the users `pick` against every user at once: the overlaps (counts) on the
    items rated by at least `HEAVY_SHARE` of the users are one float32 matrix product
    (counts below 2^24 are exact in float32), the rest a sparse product added in.

    No similarity is computed for every pair: a row's k-th largest is at least a floor f
    read off a sample of the users (k of them reach it), and J = c / (a + b - c) >= f is
    c >= f (a + b) / (1 + f), a count threshold growing with the other user's size b.
    The users after the sample are in order of size, so a segment of them is screened
    against the threshold of its smallest size (a superset), by its largest count first;
    the few counts that pass are turned into similarities in float64 and the top k
    summed."""
    n = w.shape[0]
    size = np.diff(w.indptr).astype(float)
    sample = np.zeros(n, bool)
    sample[::max(1, n // FLOOR_SAMPLE)] = True
    order = np.lexsort((size, ~sample))  # the sample first, then everyone by size
    n_sample = min(n, -(-int(sample.sum()) // SEGMENT) * SEGMENT)  # whole segments
    whole = n_sample // SEGMENT * SEGMENT
    column = np.empty(n, np.int64)
    column[order] = np.arange(n)
    b = size[order]  # per column: its user's size
    segments = -(-(n - n_sample) // SEGMENT)  # after the sample (the last one padded)
    width = n_sample + segments * SEGMENT
    heavy = degree >= HEAVY_SHARE * n
    wc = w.tocsc()
    dense = np.zeros((width, int(heavy.sum())), np.float32)  # the padding: no items
    dense[:n] = wc[:, np.flatnonzero(heavy)].toarray()[order]
    light = wc[:, np.flatnonzero(~heavy)].tocsr()
    light_t = light[order].T.tocsr()  # items x columns
    smallest = b[n_sample + SEGMENT * np.arange(segments)]  # per segment (sizes ascend)
    chunk = max(1, DENSE_CELLS // width)
    out = np.empty(len(pick))
    for lo in range(0, len(pick), chunk):
        rows = pick[lo:lo + chunk]
        c, own = len(rows), column[rows]
        inter = dense[own] @ dense.T
        extra = (light[rows] @ light_t).tocoo()  # one entry per (user, co-rater)
        inter.reshape(-1)[extra.row.astype(np.int64) * width + extra.col] += extra.data
        inter[np.arange(c), own] = 0.0  # oneself: no similarity
        a = size[rows][:, None]
        head = inter[:, :n_sample].astype(float)
        jac = head / (a + b[None, :n_sample] - head)
        floor = np.zeros(c)
        if whole >= k * SEGMENT:
            maxima = jac[:, :whole].reshape(c, -1, SEGMENT).max(axis=2)
            floor = np.sort(maxima, axis=1)[:, -k]
        found = [np.nonzero((jac >= floor[:, None]) & (head > 0))]
        # the least count that reaches the floor, per row and segment (lowered a hair, so
        # rounding never drops an entry at the floor); only segments whose largest count
        # reaches it are looked into
        need = np.maximum(np.ceil(floor[:, None] * (a + smallest[None, :]) / (1 + floor[:, None])
                                  * (1 - 1e-9)), 1.0).astype(np.float32)
        tail = inter[:, n_sample:].reshape(c, segments, SEGMENT)
        r, s = np.nonzero(tail.max(axis=2) >= need)
        r2, j = np.nonzero(tail[r, s] >= need[r, s][:, None])
        found.append((r[r2], n_sample + s[r2] * SEGMENT + j))
        row = np.concatenate([r for r, _ in found])
        col = np.concatenate([x for _, x in found])
        both = inter[row, col].astype(float)
        exact = both / (size[rows][row] + b[col] - both)
        out[lo:lo + c] = top_k_sums(row, exact, c, k) / k
    return out


def _kth_floor(values: np.ndarray, indptr: np.ndarray, k: int) -> np.ndarray:
    """Per row of a CSR layout: a value no larger than its k-th largest entry, the k-th
    largest maximum of its segments of at most `SEGMENT` entries (0 under k segments)."""
    rows = len(indptr) - 1
    floor = np.zeros(rows, values.dtype)
    if not len(values):
        return floor
    starts = np.union1d(indptr[:-1], np.arange(0, len(values), SEGMENT))
    starts = starts[starts < len(values)]
    maxima = np.maximum.reduceat(values, starts)
    owner = np.searchsorted(indptr, starts, side="right") - 1  # empty rows own none
    order = np.lexsort((-maxima, owner))
    owner, maxima = owner[order], maxima[order]
    kth = np.arange(len(owner)) - np.searchsorted(owner, owner) == k - 1
    floor[owner[kth]] = maxima[kth]
    return floor


def top_k_sums(row: np.ndarray, values: np.ndarray, rows: int, k: int) -> np.ndarray:
    """Per row 0..rows-1, the sum of its `k` largest `values` (a row may have fewer)."""
    order = np.lexsort((-values, row))
    row, values = row[order], values[order]
    top = np.arange(len(row)) - np.searchsorted(row, row) < k
    return np.bincount(row[top], weights=values[top], minlength=rows)


def burst_rate(ratings: pd.DataFrame, bucket: str = "1min") -> pd.Series:
    """Peak number of ratings a user posted within one `bucket` of time (buckets aligned to
    the epoch, as `floor` cuts them): a count per (user, bucket) in one bincount when that
    table is small, else a groupby."""
    ts = pd.to_datetime(ratings["ts"], utc=True)
    users, user = dense_index(ratings["user_id"].to_numpy(np.int64))
    step = pd.Timedelta(bucket).value
    slot = ts.dt.tz_localize(None).to_numpy("datetime64[ns]").view(np.int64) // step
    if len(slot):
        slot -= slot.min()
    slots = int(slot.max()) + 1 if len(slot) else 0
    if len(users) * slots > BURST_CELLS:
        floored = ts.dt.floor(bucket)
        return ratings.groupby([ratings["user_id"], floored]).size().groupby(level=0).max()
    counts = np.bincount(user * slots + slot, minlength=len(users) * slots)
    peak = counts.reshape(len(users), slots).max(axis=1) if slots else counts[:0]
    return pd.Series(peak, index=pd.Index(users, name="user_id"))


BURST_CELLS = 1 << 26  # (user, bucket) counts burst_rate holds at once


def pushed_items(ratings: pd.DataFrame, past: pd.DataFrame | None, value: float,
                 alpha: float = 0.01, min_raters: int = 3, purity: float = 0.9,
                 unprompted: np.ndarray | None = None) -> pd.DataFrame:
    """Items rated `value` (the scale's top: a push; its bottom: a nuke) by more distinct
    users in the window than their past rate explains: a scan statistic on the target.

    x_i = distinct users who rated item i `value` in the window (only the `unprompted`
    ratings: items the rater was not recommended, when the caller knows); under "no attack"
    x_i ~ Poisson(lambda_i), lambda_i = N x s_i, N = the window's ratings at `value`, s_i =
    the item's share of past ratings at `value`, add-one smoothed over the items seen.
    p_i = P(X >= x_i); an item is pushed when x_i >= `min_raters`, p_i < `alpha` / m
    (Bonferroni over the m items with x_i >= 1) and the excess is at least `purity` of its
    raters (lambda_i <= (1 - purity) x_i): at most 1 - `purity` of the users its flag
    names are expected to be honest. The last rule spares a popular item an attack rates
    beside its target (bandwagon) and an honest item whose hour runs hot. Whatever a push
    attack's profiles look like (random, average, bandwagon, segment or copied from real
    users), every profile carries the target at `value`, and an item an hour normally gives
    almost no such ratings cannot take several at once (the target-focused view of Mobasher
    et al. 2007; the time-window view of Zhang et al. 2006). Without `past` there is no rate
    to test against: no item is flagged. Columns: raters, expected, p_value, pushed."""
    at = ratings["rating"].to_numpy() == value
    if unprompted is not None:
        at &= unprompted
    hits = ratings.loc[at].groupby("item_id")["user_id"].nunique()
    if past is None or past.empty or hits.empty:
        return pd.DataFrame({"raters": hits, "expected": np.nan, "p_value": np.nan,
                             "pushed": False})
    before = past.loc[past["rating"].to_numpy() == value].groupby("item_id").size()
    seen = before.index.union(ratings["item_id"].unique())
    share = (before.reindex(seen, fill_value=0) + 1.0) / (before.sum() + len(seen))
    lam = float((ratings["rating"].to_numpy() == value).sum()) * share.reindex(hits.index)
    p = pd.Series(stats.poisson.sf(hits.to_numpy() - 1, lam.to_numpy()), index=hits.index)
    return pd.DataFrame({"raters": hits, "expected": lam, "p_value": p,
                         "pushed": (hits >= min_raters) & (p < alpha / len(hits))
                         & (lam <= (1.0 - purity) * hits)})


COLUMNS = ["count", "rdma", "degsim", "burst", "pushed", "three_sigma", "robust_count",
           "robust_rdma", "robust_degsim", "robust_burst", "target", "flood", "combined"]


def target_raters(ratings: pd.DataFrame, past: pd.DataFrame | None,
                  scale: tuple[float, float] = (1.0, 5.0), alpha: float = 0.01,
                  min_raters: int = 3, purity: float = 0.9,
                  unprompted: np.ndarray | None = None) -> pd.Series:
    """Per user, how many pushed (top value) or nuked (bottom value) items (`pushed_items`)
    they rated at that value in the window."""
    out = pd.Series(0, index=pd.Index(ratings["user_id"].unique(), name="user_id"))
    for value in (scale[1], scale[0]):
        items = pushed_items(ratings, past, value, alpha, min_raters, purity, unprompted)
        pushed = items.index[items["pushed"].to_numpy(bool)]
        at = (ratings["rating"].to_numpy() == value) & ratings["item_id"].isin(pushed).to_numpy()
        if unprompted is not None:
            at &= unprompted
        hit = ratings.loc[at].groupby("user_id")["item_id"].nunique()
        out = out.add(hit, fill_value=0)
    return out.astype(int)


def detect(ratings: pd.DataFrame, z: float = 3.5, bucket: str = "1min", sample: int = 3000,
           past: pd.DataFrame | None = None, alpha: float = 0.01, min_raters: int = 3,
           purity: float = 0.9, flood: float = 60, unprompted: np.ndarray | None = None,
           ) -> pd.DataFrame:
    """Per-user features and flags: three-sigma on counts; robust z (> `z`) on counts, RDMA,
    DegSim and burst rate; `target`: rated an item the window pushes or nukes beyond its
    past rate (`pushed_items` against `past`, the ratings before the window); `flood`: at
    least `flood` ratings within one `bucket` (MovieLens's most prolific rater posted 30 in a
    minute); `combined` = `target`, `flood`, or a volume outlier (count or burst) whose
    profile is also abnormal (RDMA: disagrees with the crowd; or DegSim: a near-copy of
    other raters).

    Volume alone flags honest heavy users, RDMA alone honest contrarians, DegSim alone small
    groups of like-minded fans; a loud shilling profile is loud and abnormal at once
    (Chirita et al. 2005 combine their features the same way). A quiet one, shaped like an
    honest user, still has to rate its target: the target test needs no volume."""
    if ratings.empty:
        return pd.DataFrame(columns=COLUMNS)
    counts = ratings.groupby("user_id").size().astype(float)
    burst = burst_rate(ratings, bucket).astype(float)
    # DegSim on every user up to `sample` of them; beyond, on a seeded sample (for its median
    # and MAD) plus the volume outliers, the only users the volume rule can pick
    users = counts.index.to_numpy()
    only = None
    if len(users) > sample:
        loud = users[(robust_z(counts) > z).to_numpy() | (robust_z(burst) > z).to_numpy()]
        rng = np.random.default_rng(0)
        only = np.union1d(rng.choice(users, sample, replace=False), loud)
    frame = pd.DataFrame({"count": counts, "rdma": rdma(ratings),
                          "degsim": degsim(ratings, only=only), "burst": burst})
    frame["pushed"] = target_raters(ratings, past, alpha=alpha, min_raters=min_raters,
                                    purity=purity, unprompted=unprompted).reindex(
        frame.index, fill_value=0)
    frame["three_sigma"] = three_sigma(frame["count"])
    for col in ("count", "rdma", "degsim", "burst"):
        frame[f"robust_{col}"] = (robust_z(frame[col]) > z).fillna(False).astype(bool)
    frame["target"] = frame["pushed"] > 0
    frame["flood"] = frame["burst"] >= flood
    frame["combined"] = frame["target"] | frame["flood"] | (
        (frame["robust_count"] | frame["robust_burst"])
        & (frame["robust_rdma"] | frame["robust_degsim"]))
    frame.index.name = "user_id"
    return frame


def precision_recall(flagged: set[int], truth: set[int]) -> tuple[float, float]:
    """(precision, recall) of a flagged set against the ground-truth bots."""
    tp = len(flagged & truth)
    precision = tp / len(flagged) if flagged else (1.0 if not truth else 0.0)
    recall = tp / len(truth) if truth else 1.0
    return float(precision), float(recall)
