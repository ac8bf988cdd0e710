"""The analytics engine: lake events -> one snapshot of every responsible-ML figure.

`AnalyticsLogic.snapshot` is pure (frames in, JSON-ready dict out) and works on columnar
arrays: the reco log stays as flat item ids plus list offsets (Arrow's layout), so a window
of a million responses is counted with `bincount`s, not Python loops. The metric definitions
live in `backend.ml.metrics.*`; this module only selects windows and groups.

Attribution choices (documented in docs/architecture.md):
- a user belongs to the variant of their latest recommendation in the window (assignment is
  sticky, so this is their arm);
- watch-through rate of an arm = watches by its users / items it recommended in the window;
- the "training window" for drift is everything before the current window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from backend.core.settings import AnalyticsSettings
from backend.ml.indexing import dense_index
from backend.ml.metrics import abtest, fairness, feedback, ops, spam
from backend.ml.metrics.ranking import gini
from backend.ml.recommenders.base import item_features


@dataclass
class RecoLog:
    """The `events.reco` log in columnar form: one entry per response, items flattened."""

    ts: np.ndarray  # datetime64[us] (UTC), per response
    user: np.ndarray  # int64, per response
    code: np.ndarray  # int32 variant code per response, into `names`
    names: list[str]  # variant names
    latency: np.ndarray  # float, per response
    offsets: np.ndarray  # int64, len = responses + 1
    items: np.ndarray  # int64, flattened

    @classmethod
    def from_table(cls, table: pa.Table) -> RecoLog:
        items = table.column("items").combine_chunks() if table.num_rows else \
            pa.array([], pa.list_(pa.int64()))
        return cls(
            ts=_utc_naive(table.column("ts")),
            user=table.column("user_id").to_numpy().astype(np.int64),
            **_encode(table.column("variant")),
            latency=table.column("latency_ms").to_numpy().astype(np.float64),
            offsets=(items.offsets.to_numpy().astype(np.int64) if len(items)
                     else np.zeros(1, np.int64)),
            items=items.values.to_numpy().astype(np.int64) if len(items) else
            np.zeros(0, np.int64),
        )

    def __len__(self) -> int:
        return len(self.user)

    def arm(self, name: str) -> np.ndarray:
        """Mask of the responses served by variant `name`."""
        return self.code == (self.names.index(name) if name in self.names else -1)


def _encode(column: pa.ChunkedArray) -> dict[str, Any]:
    enc = pc.dictionary_encode(column).combine_chunks()
    if len(enc) == 0:
        return {"code": np.zeros(0, np.int32), "names": []}
    return {"code": enc.indices.to_numpy(zero_copy_only=False).astype(np.int32),
            "names": [str(x) for x in enc.dictionary.to_pylist()]}


def _utc_naive(column: pa.ChunkedArray) -> np.ndarray:
    """UTC timestamps as naive datetime64[us] (numpy has no time zones)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.cast(pa.timestamp("us")).to_numpy(zero_copy_only=False)


def _naive(ts: pd.Series | pd.Timestamp) -> Any:
    if isinstance(ts, pd.Timestamp):
        return (ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts).to_datetime64()
    s = pd.to_datetime(ts, utc=True)
    return s.dt.tz_localize(None).to_numpy(dtype="datetime64[us]")


def _clean(obj: Any) -> Any:
    """JSON-ready: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


class AnalyticsLogic:
    def __init__(self, cfg: AnalyticsSettings, split: float = 0.5) -> None:
        self.cfg = cfg
        self.split = split

    # -- entry point ---------------------------------------------------------------------

    def snapshot(self, reco: RecoLog, watch: pd.DataFrame, rating: pd.DataFrame,
                 items: pd.DataFrame, users: pd.DataFrame, end: pd.Timestamp,
                 probes: pd.DataFrame | None = None) -> dict[str, Any]:
        """Every figure for the window [end - window, end)."""
        cfg = self.cfg
        win = np.timedelta64(int(cfg.window_minutes * 60e6), "us")
        t_end = _naive(end)
        t_start = t_end - win
        w_ts = _naive(watch["ts"]) if len(watch) else np.zeros(0, "datetime64[us]")
        r_ts = _naive(rating["ts"]) if len(rating) else np.zeros(0, "datetime64[us]")
        in_win = (reco.ts >= t_start) & (reco.ts < t_end)
        watch_w = watch[(w_ts >= t_start) & (w_ts < t_end)]
        rating_w = rating[(r_ts >= t_start) & (r_ts < t_end)]
        upto_w = watch[w_ts < t_end]
        upto_r = rating[r_ts < t_end]

        lengths = np.diff(reco.offsets)
        row = np.repeat(np.arange(len(reco)), lengths)  # response of each flattened item
        catalog, item_idx = dense_index(reco.items, items["item_id"].to_numpy(dtype=np.int64))
        positions = np.arange(len(reco.items)) - reco.offsets[:-1][row]
        idx, known = _positions(catalog, np.concatenate([upto_w["item_id"].to_numpy(np.int64),
                                                         upto_r["item_id"].to_numpy(np.int64)]))
        popularity = np.bincount(idx[known], minlength=len(catalog)).astype(float)
        groups = self._popularity_groups(popularity, catalog)
        rating_counts = upto_r.groupby("user_id").size()
        ild = self._list_diversity(reco, in_win, lengths, item_idx, items, catalog)

        codes = np.unique(reco.code[in_win])
        variants = sorted(reco.names[c] for c in codes)
        per_variant = {}
        for v in [*variants, "all"]:
            mask = in_win if v == "all" else in_win & reco.arm(v)
            per_variant[v] = self._arm(reco, mask, row, item_idx, positions, catalog, groups,
                                       ild, users, rating_counts)
        arm = _arm_of_users(reco, in_win)
        snap = {
            "window": {"start": str(pd.Timestamp(t_start, tz="UTC")),
                       "end": str(pd.Timestamp(t_end, tz="UTC")),
                       "minutes": cfg.window_minutes},
            "counts": {"recommendations": int(in_win.sum()),
                       "recommended_items": int(lengths[in_win].sum()),
                       "watches": len(watch_w), "ratings": len(rating_w),
                       "users": len(arm), "catalog": len(catalog)},
            "fairness": {v: a["fairness"] for v, a in per_variant.items()},
            "tail": {v: a["tail"] for v, a in per_variant.items()},
            "echo": self._echo(reco, row, item_idx, catalog, t_end, win, variants, upto_w,
                               arm),
            "spam": self._spam(rating_w),
            "ab": self._ab(reco, in_win, lengths, watch_w, rating_w, per_variant, arm, t_end,
                           win),
            "sla": self._sla(reco, in_win, variants, probes, t_start, t_end),
            "drift": self._drift(rating, r_ts, watch, w_ts, catalog, t_start, t_end),
        }
        return _clean(snap)

    # -- pieces ----------------------------------------------------------------------------

    def _popularity_groups(self, popularity: np.ndarray, catalog: np.ndarray) -> np.ndarray:
        """0 head, 1 mid, 2 tail, per catalog position (see feedback.popularity_groups)."""
        order = np.lexsort((catalog, -popularity))
        n = len(catalog)
        n_head = int(round(self.cfg.head_share * n))
        n_tail = int(round(self.cfg.tail_share * n))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        return np.where(rank < n_head, 0, np.where(rank >= n - n_tail, 2, 1))

    @staticmethod
    def _list_diversity(reco: RecoLog, in_win: np.ndarray, lengths: np.ndarray,
                        item_idx: np.ndarray, items: pd.DataFrame,
                        catalog: np.ndarray) -> np.ndarray:
        """Intra-list diversity per response (NaN outside the window or under 2 items).

        Vectorised form of ranking.intra_list_diversity: with unit feature rows f, the sum of
        pairwise cosines of a list is (|sum f|^2 - m) / 2, so ILD = 1 - (|S|^2 - m) /
        (m (m - 1)) with S = sum of the list's feature rows and m its items with features."""
        out = np.full(len(reco), np.nan)
        if "genres" not in items or not in_win.any():
            return out
        feats = item_features(items, catalog).astype(np.float64)
        has = (np.abs(feats).sum(axis=1) > 0).astype(np.float64)
        picked = np.flatnonzero(in_win)
        keep = np.repeat(in_win, lengths)
        indptr = np.concatenate([[0], np.cumsum(lengths[picked])])
        lists = sp.csr_matrix((np.ones(int(indptr[-1])), item_idx[keep], indptr),
                              shape=(len(picked), len(catalog)))
        s = lists @ feats
        m = lists @ has
        sumsq = np.einsum("ij,ij->i", s, s)
        with np.errstate(divide="ignore", invalid="ignore"):
            ild = 1.0 - (sumsq - m) / (m * (m - 1))
        ild[m < 2] = np.nan
        out[picked] = ild
        return out

    def _arm(self, reco: RecoLog, mask: np.ndarray, row: np.ndarray, item_idx: np.ndarray,
             positions: np.ndarray, catalog: np.ndarray, groups: np.ndarray, ild: np.ndarray,
             users: pd.DataFrame, rating_counts: pd.Series) -> dict[str, Any]:
        cfg = self.cfg
        sel = mask[row]
        idx = item_idx[sel]
        counts = np.bincount(idx, minlength=len(catalog)).astype(float)
        exposure = np.bincount(idx, weights=1.0 / np.log2(positions[sel] + 2.0),
                               minlength=len(catalog))
        coverage = float((counts > 0).mean()) if len(catalog) else 0.0
        # diversity per user (each user once), then per segment
        users_arr = reco.user[mask]
        div = ild[mask]
        ok = ~np.isnan(div)
        per_user = (pd.Series(div[ok]).groupby(users_arr[ok]).mean()
                    if ok.any() else pd.Series(dtype=float))
        seg = fairness.segments(
            users[users["user_id"].isin(per_user.index)], rating_counts.to_dict())
        known = set(seg.get("activity", {}))
        for u in per_user.index.difference(list(known)):  # bots, users without demographics
            seg.setdefault("activity", {})[int(u)] = fairness.activity_segment(
                int(rating_counts.get(u, 0)))
            for dim in ("gender", "age"):
                if dim in seg:
                    seg[dim][int(u)] = "unknown"
        diversity = {dim: _mean_by(per_user, mapping) for dim, mapping in seg.items()}
        gaps = {dim: fairness.parity_gap({k: v for k, v in d.items() if k != "unknown"})
                for dim, d in diversity.items()}
        shown = counts > 0
        rates = {name: float(shown[groups == g].mean()) if (groups == g).any() else 0.0
                 for g, name in enumerate(("head", "mid", "tail"))}
        tail = {"rates": rates, **feedback.starvation(rates, cfg.starvation_ratio)}
        fair = {
            "coverage": coverage, "gini": gini(counts), "top10_share": fairness.top_share(
                counts, 10), "exposure_gini": gini(exposure),
            "diversity": float(np.nanmean(div)) if ok.any() else None,
            "diversity_by_segment": diversity, "parity_gap": gaps,
            "requirements": {
                "coverage": {"value": coverage, "min": cfg.coverage_min,
                             "pass": coverage >= cfg.coverage_min},
                "parity": {"value": max(gaps.values(), default=0.0),
                           "max": cfg.parity_gap_max,
                           "pass": max(gaps.values(), default=0.0) < cfg.parity_gap_max},
            },
        }
        return {"fairness": fair, "tail": tail}

    def _echo(self, reco: RecoLog, row: np.ndarray, item_idx: np.ndarray,
              catalog: np.ndarray, t_end: Any, win: Any, variants: list[str],
              watch: pd.DataFrame, arm: pd.Series) -> dict[str, Any]:
        """Gini and top-10 share in each of the last `echo_windows` windows, and their trend;
        user homogenisation over all watches so far, overall and per arm."""
        n_win, n_cat, n_var = self.cfg.echo_windows, len(catalog), max(len(reco.names), 1)
        first = t_end - n_win * win
        valid = (reco.ts >= first) & (reco.ts < t_end)
        widx = np.zeros(len(reco), dtype=np.int64)
        widx[valid] = (reco.ts[valid] - first) // win
        resp_key = (reco.code.astype(np.int64) * n_win + widx) * n_cat  # per response
        sel = valid[row]
        key = resp_key[row[sel]] + item_idx[sel]
        grid = np.bincount(key, minlength=n_var * n_win * n_cat).reshape(n_var, n_win, n_cat)
        out: dict[str, Any] = {"windows": n_win}
        for v in [*variants, "all"]:
            g = grid.sum(axis=0) if v == "all" else grid[reco.names.index(v)]
            active = g.sum(axis=1) > 0
            ginis = [gini(r) if a else None for r, a in zip(g, active, strict=True)]
            tops = [fairness.top_share(r) if a else None for r, a in zip(g, active, strict=True)]
            out[v] = {"gini": ginis, "top10_share": tops,
                      "gini_trend": feedback.trend([x for x in ginis if x is not None],
                                                   self.cfg.echo_slope_max).as_dict(),
                      "top10_trend": feedback.trend([x for x in tops if x is not None],
                                                    self.cfg.echo_slope_max).as_dict()}
        wu = watch["user_id"].to_numpy(np.int64)
        wi = watch["item_id"].to_numpy(np.int64)
        out["homogenization"] = feedback.homogenization(wu, wi)
        w_arm = pd.Series(wu).map(arm.map(reco.names.index)).fillna(-1).to_numpy(np.int64)
        out["homogenization_by_variant"] = {
            v: feedback.homogenization(wu[w_arm == c], wi[w_arm == c])
            for v, c in ((v, reco.names.index(v)) for v in variants)}
        return out

    def _spam(self, rating_w: pd.DataFrame, top: int = 300) -> dict[str, Any]:
        flags = spam.detect(rating_w, self.cfg.spam_z, self.cfg.spam_bucket)
        cols = ["three_sigma", "robust_count", "robust_rdma", "robust_degsim", "robust_burst",
                "combined"]
        if flags.empty:
            return {"raters": 0, "flagged": {c: [] for c in cols}, "three_sigma_line": None,
                    "users": []}
        loudest = flags.sort_values("count", ascending=False).head(top)
        return {"raters": len(flags),
                "flagged": {c: sorted(int(u) for u in flags.index[flags[c].astype(bool)])
                            for c in cols},
                "three_sigma_line": float(flags["count"].mean()
                                          + 3 * flags["count"].std(ddof=0)),
                "users": [{"user_id": int(u), "count": int(r["count"]),
                           "rdma": float(r["rdma"]),
                           "degsim": None if pd.isna(r["degsim"]) else float(r["degsim"]),
                           "burst": int(r["burst"]), "combined": bool(r["combined"])}
                          for u, r in loudest.iterrows()]}

    def _ab(self, reco: RecoLog, in_win: np.ndarray, lengths: np.ndarray,
            watch_w: pd.DataFrame, rating_w: pd.DataFrame, per_variant: dict,
            arm: pd.Series, t_end: Any, win: Any) -> dict[str, Any]:
        cfg = self.cfg
        variants = sorted(set(arm.unique().tolist()))
        w_arm = watch_w["user_id"].map(arm).to_numpy()
        r_arm = rating_w["user_id"].map(arm).to_numpy()
        users_per_arm = arm.value_counts()
        arms: dict[str, Any] = {}
        ratings_of: dict[str, np.ndarray] = {}
        for v in variants:
            m = in_win & reco.arm(v)
            recommended = int(lengths[m].sum())
            watches = int((w_arm == v).sum())
            ratings = rating_w["rating"].to_numpy(dtype=float)[r_arm == v]
            ratings_of[v] = ratings
            arms[v] = {
                "requests": int(m.sum()), "users": int(users_per_arm.get(v, 0)),
                "recommended_items": recommended, "watches": watches,
                "watch_through": watches / recommended if recommended else None,
                "watch_through_ci": abtest.proportion_ci(min(watches, recommended),
                                                         recommended),
                "ratings": len(ratings),
                "mean_rating": float(ratings.mean()) if len(ratings) else None,
                "mean_rating_ci": abtest.mean_ci(ratings),
            }
        out: dict[str, Any] = {"arms": arms}
        if not {"A", "B"} <= set(arms):
            return out
        a, b = arms["A"], arms["B"]
        out["watch_through_test"] = abtest.two_proportion_z(
            min(b["watches"], b["recommended_items"]), b["recommended_items"],
            min(a["watches"], a["recommended_items"]), a["recommended_items"])
        out["rating_test"] = abtest.welch_t(ratings_of["B"], ratings_of["A"])
        out["srm"] = abtest.sample_ratio_mismatch([a["users"], b["users"]],
                                                  [self.split, 1 - self.split])
        out["sequential"] = self._sequential(reco, lengths, watch_w, w_arm, t_end, win)
        p = out["sequential"]["p_value"]
        leader = "B" if out["watch_through_test"]["diff"] > 0 else "A"
        guard = per_variant[leader]["fairness"]["requirements"]
        if p is None or p >= cfg.alpha:
            verdict, reason = None, "not significant yet (always-valid p >= alpha)"
        elif out["srm"]["mismatch"]:
            verdict, reason = None, "sample ratio mismatch: the split is broken"
        elif not all(r["pass"] for r in guard.values()):
            verdict, reason = None, f"{leader} leads but fails a fairness guardrail"
        else:
            verdict, reason = leader, "significant and within the fairness guardrails"
        out["winner"] = {"variant": verdict, "reason": reason, "leader": leader}
        return out

    def _sequential(self, reco: RecoLog, lengths: np.ndarray, watch_w: pd.DataFrame,
                    w_arm: np.ndarray, t_end: Any, win: Any, looks: int = 12) -> dict:
        """mSPRT p-value of the B - A watch-through difference over `looks` cumulative looks
        inside the window (so it can be read at any time during the window)."""
        start = t_end - win
        step = win / looks
        m = (reco.ts >= start) & (reco.ts < t_end)
        look = ((reco.ts[m] - start) // step).astype(np.int64)
        w_ts = _naive(watch_w["ts"]) if len(watch_w) else np.zeros(0, "datetime64[us]")
        w_look = ((w_ts - start) // step).astype(np.int64) if len(w_ts) else \
            np.zeros(0, np.int64)
        n, s = {}, {}
        for v in ("A", "B"):
            arm_m = reco.arm(v)[m]
            n[v] = np.cumsum(np.bincount(look[arm_m], weights=lengths[m][arm_m],
                                         minlength=looks)[:looks])
            s[v] = np.cumsum(np.bincount(w_look[w_arm == v], minlength=looks)[:looks])
        diffs, variances = [], []
        for k in range(looks):
            na, nb = n["A"][k], n["B"][k]
            if na == 0 or nb == 0:
                diffs.append(0.0)
                variances.append(0.0)
                continue
            pa_, pb = min(s["A"][k], na) / na, min(s["B"][k], nb) / nb
            diffs.append(pb - pa_)
            variances.append(pa_ * (1 - pa_) / na + pb * (1 - pb) / nb)
        p = abtest.msprt_p_values(diffs, variances, self.cfg.msprt_tau2)
        return {"p_value": p[-1] if p else None, "series": p}

    @staticmethod
    def _sla(reco: RecoLog, in_win: np.ndarray, variants: list[str],
             probes: pd.DataFrame | None, t_start: Any, t_end: Any) -> dict[str, Any]:
        latency = {v: ops.latency_percentiles(reco.latency[in_win & reco.arm(v)])
                   for v in variants}
        latency["all"] = ops.latency_percentiles(reco.latency[in_win])
        ok: list[bool] = []
        if probes is not None and len(probes):
            p_ts = _naive(probes["ts"])
            ok = probes.loc[(p_ts >= t_start) & (p_ts < t_end), "ok"].astype(bool).tolist()
        up = ops.uptime(ok)
        return {"latency_ms": latency, "probes": len(ok), "uptime": up,
                "error_rate": None if up is None else 1.0 - up}

    @staticmethod
    def _drift(rating: pd.DataFrame, r_ts: np.ndarray, watch: pd.DataFrame, w_ts: np.ndarray,
               catalog: np.ndarray, t_start: Any, t_end: Any) -> dict[str, Any]:
        before, now = r_ts < t_start, (r_ts >= t_start) & (r_ts < t_end)
        values = rating["rating"].to_numpy(dtype=np.int64) if len(rating) else \
            np.zeros(0, np.int64)
        hist_train = np.bincount(values[before], minlength=6)[1:6]
        hist_now = np.bincount(values[now], minlength=6)[1:6]
        items = np.concatenate([watch["item_id"].to_numpy(dtype=np.int64),
                                rating["item_id"].to_numpy(dtype=np.int64)])
        ts = np.concatenate([w_ts, r_ts])
        idx, known = _positions(catalog, items)
        idx, ts = idx[known], ts[known]
        train = np.bincount(idx[ts < t_start], minlength=len(catalog))
        cur = np.bincount(idx[(ts >= t_start) & (ts < t_end)], minlength=len(catalog))
        e, a = ops.popularity_bins(train, cur)
        return {"rating_psi": ops.psi(hist_train, hist_now) if hist_now.sum() else None,
                "popularity_psi": ops.psi(e, a) if cur.sum() and train.sum() else None,
                "rating_hist_train": hist_train.tolist(), "rating_hist_now": hist_now.tolist()}


def _positions(catalog: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in the sorted `catalog`, whether the catalog holds the id) per item."""
    idx = np.searchsorted(catalog, items)
    known = idx < len(catalog)
    known[known] = catalog[idx[known]] == items[known]
    return idx, known


def _arm_of_users(reco: RecoLog, mask: np.ndarray) -> pd.Series:
    """Each user's variant (index user_id) = that of their latest recommendation in `mask`."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return pd.Series(dtype=object)
    order = idx[np.argsort(reco.ts[idx], kind="stable")][::-1]  # newest first
    users, first = np.unique(reco.user[order], return_index=True)
    names = np.asarray(reco.names, dtype=object)
    return pd.Series(names[reco.code[order[first]]], index=users)


def _mean_by(per_user: pd.Series, mapping: dict[int, str]) -> dict[str, float]:
    if per_user.empty:
        return {}
    keys = per_user.index.map(lambda u: mapping.get(int(u), "unknown"))
    return {str(k): float(v) for k, v in per_user.groupby(keys).mean().sort_index().items()}
