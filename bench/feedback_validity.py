"""Does the echo-chamber figure mean what it says, on traffic the platform's simulator did not
make? The snapshot's feedback-loop code (backend/analytics/feedback.py) is run on reco logs
drawn here, from policies with known behaviour, seeded:

- traffic drop: one fixed policy (Zipf-like item weights, exponent, catalog size and list
  length drawn per run), traffic falling window after window. Nothing changes but volume, so
  every "echo detected" is a false alarm. Beside it, on the same logs, the raw-count Gini the
  platform used before (every recommended item, today's catalog) and its trend.
- growing catalog: a policy uniform over whatever exists, the catalog growing each window.
  A false slope is a trend interval that excludes zero (either sign: nominally 5% of runs);
  the catalog as of each window against today's catalog on the same logs; and false echoes.
- real echo: the policy's exponent rises by 0.08 (or 0.03) each window (exposure really
  concentrates), traffic falling as in the first case: the share of runs detected (a
  detector that never fires has no false alarms either).

- forecast against realised: the pre-promotion forecast (backend/ml/forecast.py, 5 steps of
  300 visits of the platform's simulator) of each policy x user world x seed, against the
  slope realised in this bench's own closed loop (`--long-cycles` cycles of recommend ->
  react -> refit, 300 visits each) with users unlike the simulator's: genre tastes from
  their MovieLens ratings and a liking for quality, static, drifting toward what they watch,
  or also watching outside recommendations. Both start from a young platform's history
  (`--base-share` of MovieLens, seeded), where a policy's own traffic can move exposure;
  on all of MovieLens every realised slope is within +-0.003 and the points have no order
  to predict. Policies: popularity, Model A (item kNN) with a boost for what its own
  traffic watched, Model A, Model B (diversity kNN), random. Reports the Spearman rank
  correlation of forecast and realised least-squares slopes (bootstrap 95% CI over the
  points) and how often the forecast's interval covers the realised slope; beside it the
  same for the realised net change per cycle (first three cycles to last three), since a
  loop that concentrates early and then levels off has a flat straight line.

    python bench/feedback_validity.py [--runs 60] [--forecast-seeds 3] [--long-cycles 20]
Writes var/bench/feedback_validity.json (keys: false_echo_rate_on_traffic_drop,
false_echo_rate_raw_counts, false_echo_rate_on_catalog_growth,
false_slope_rate_on_catalog_growth, false_slope_rate_todays_catalog, echo_detection_rate,
echo_detection_rate_weak, median_gini_slope, runs, not_enough_data,
forecast_rank_correlation, forecast_rank_correlation_ci, forecast_interval_coverage,
forecast_rank_correlation_net_change, forecast_points).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any, TypedDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

from backend.analytics import feedback  # noqa: E402
from backend.analytics.window import LogWindow, RecoLog  # noqa: E402
from backend.core.settings import AnalyticsSettings, SimSettings  # noqa: E402
from backend.data.movielens import load  # noqa: E402
from backend.ml.evaluation import COLUMNS, build_interactions  # noqa: E402
from backend.ml.forecast import forecast_gini_slope  # noqa: E402
from backend.ml.metrics.feedback import trend  # noqa: E402
from backend.ml.metrics.ranking import gini  # noqa: E402
from backend.ml.recommenders import DiversityKNN, ItemKNN, Popularity, Recommender  # noqa: E402

END = pd.Timestamp("2026-01-01T12:00:00Z")
WINDOWS = 6
CFG = AnalyticsSettings(window_minutes=60, echo_windows=WINDOWS)


def lists(rng: np.random.Generator, weights: np.ndarray, responses: int, k: int,
          ) -> np.ndarray:
    """`responses` lists of `k` distinct items drawn by `weights` (Gumbel top-k: sampling
    without replacement in proportion to the weights), item ids from 1."""
    keys = np.log(weights)[None, :] + rng.gumbel(size=(responses, len(weights)))
    return np.argpartition(-keys, k - 1, axis=1)[:, :k] + 1


def reco_log(per_window: list[np.ndarray]) -> RecoLog:
    """One response per row of each window's lists, spread over the window."""
    ts, items = [], []
    for w, block in enumerate(per_window):
        start = END - pd.Timedelta(hours=WINDOWS - w)
        offsets: np.ndarray | list[float] = (np.linspace(0, 3600 - 1, len(block)) if len(block)
                                             else [])
        ts += [start + pd.Timedelta(seconds=float(s)) for s in offsets]
        items += block.tolist()
    return RecoLog.from_table(pa.table({
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "user_id": pa.array(np.arange(len(ts)), pa.int64()),
        "variant": pa.array(["A"] * len(ts), pa.string()),
        "latency_ms": pa.array(np.full(len(ts), 10.0), pa.float64()),
        "items": pa.array(items, pa.list_(pa.int64()))}))


def echo_of(reco: RecoLog, items: pd.DataFrame):
    empty = pd.DataFrame({"ts": pd.Series([], dtype="datetime64[us, UTC]"),
                          "user_id": pd.Series([], dtype="int64"),
                          "item_id": pd.Series([], dtype="int64")})
    win = LogWindow.of(reco, empty, empty.assign(rating=pd.Series([], dtype="int64")), items,
                       CFG.window_minutes, END)
    return feedback.compute(CFG, reco, win).variants["A"]


def falling(rng: np.random.Generator) -> list[int]:
    """Responses per window: a start drawn in 400..3000, falling by 15-50% a window."""
    start, factor = rng.integers(400, 3000), rng.uniform(0.5, 0.85)
    return [int(start * factor**w) for w in range(WINDOWS)]


def traffic_drop(seed: int, rising: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    n_items, k = int(rng.integers(500, 2000)), int(rng.choice([5, 10, 20]))
    exponent = rng.uniform(0.6, 1.1)
    ranks = rng.permutation(n_items) + 1  # popularity order independent of the item id
    volumes = falling(rng)
    per_window = [lists(rng, ranks ** -(exponent + rising * w), v, k)
                  for w, v in enumerate(volumes)]
    s = echo_of(reco_log(per_window), pd.DataFrame({"item_id": np.arange(1, n_items + 1)}))
    return {"detected": s.gini_trend.detected or s.top10_trend.detected,
            "gini_slope": s.gini_trend.slope, "not_enough_data": s.gini_trend.slope is None,
            "raw_detected": trend(s.raw_gini, CFG.echo_slope_max).detected,
            "volumes": volumes, "items": n_items, "k": k, "exponent": round(exponent, 3)}


def catalog_growth(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    start, added = int(rng.integers(200, 800)), int(rng.integers(20, 200))
    k, responses = int(rng.choice([5, 10])), int(rng.integers(200, 1500))
    sizes = [start + added * w for w in range(WINDOWS)]
    released = [None] * start + [(END - pd.Timedelta(hours=WINDOWS - w)).isoformat()
                                 for w in range(1, WINDOWS) for _ in range(added)]
    items = pd.DataFrame({"item_id": np.arange(1, sizes[-1] + 1), "released_at": released})
    reco = reco_log([lists(rng, np.ones(n), responses, k) for n in sizes])

    def false_slope(t) -> bool:
        return t.slope is not None and (t.ci_low > 0 or t.ci_high < 0)

    of_day = echo_of(reco, items).gini_trend
    return {"false_slope": false_slope(of_day), "false_echo": of_day.detected,
            "false_slope_today": false_slope(
                echo_of(reco, items.drop(columns="released_at")).gini_trend),
            "catalog": sizes, "responses": responses, "k": k}


class RandomPolicy(Recommender):
    """Uniformly random lists (the no-feedback baseline)."""

    kind = "bench_random"

    def _fit(self, frame: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        self.rng = np.random.default_rng(int(self.params.get("seed", 0)))

    def _score_known(self, rows: np.ndarray) -> np.ndarray:
        return self.rng.random((len(rows), len(self.item_ids)))

    def _cold_scores(self, user_id: int) -> np.ndarray:
        return self.rng.random(len(self.item_ids))

    def _arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        pass


class BoostedKNN(ItemKNN):
    """Model A plus a boost for what the last month's traffic watched: the more it shows an
    item, the more it is watched, the more it is shown (a popularity-boosting policy)."""

    kind = "bench_boosted_knn"

    def _fit(self, frame: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        super()._fit(frame, rows, cols)
        ts = pd.to_datetime(frame["ts"], utc=True)
        recent = (ts >= ts.max() - pd.Timedelta(days=30)).to_numpy()
        counts = np.bincount(cols[recent], minlength=len(self.item_ids)).astype(float)
        self.boost = counts / max(counts.max(), 1.0)

    def _score_known(self, rows: np.ndarray) -> np.ndarray:
        scores = super()._score_known(rows)
        strength = float(self.params.get("boost", 0.3))
        return scores + strength * scores.max(axis=1, keepdims=True) * self.boost


POLICIES = {"popularity": lambda seed: Popularity(),
            "boosted": lambda seed: BoostedKNN(boost=0.3),
            "model_a": lambda seed: ItemKNN(),
            "model_b": lambda seed: DiversityKNN(), "random": lambda seed: RandomPolicy(seed=seed)}


class World(TypedDict):
    """GenreWorld's knobs."""

    drift: float
    outside: int


WORLDS: dict[str, World] = {"static": {"drift": 0.0, "outside": 0},
                            "drifting": {"drift": 0.1, "outside": 0},
                            "outside": {"drift": 0.0, "outside": 2}}


class GenreWorld:
    """This bench's users, unlike the platform simulator's low-rank tastes: a user's genre
    shares come from the films they rated 4 or 5 on MovieLens (smoothed), an item appeals by
    its genre match and its MovieLens mean rating, and a user watches a recommended item with
    probability position bias x logistic(appeal / temperature). `drift` pulls a user's genre
    shares toward what they watch; `outside` items a visit are watched by popularity, not
    recommendation."""

    def __init__(self, ml, rng: np.random.Generator, drift: float, outside: int) -> None:
        genres = sorted({g for gs in ml.items["genres"] for g in gs})
        self.items = ml.items["item_id"].to_numpy(np.int64)
        self.col = {int(i): n for n, i in enumerate(self.items)}
        m = np.zeros((len(self.items), len(genres)))
        for n, gs in enumerate(ml.items["genres"]):
            for g in gs:
                m[n, genres.index(g)] = 1.0
        self.m = m / np.maximum(m.sum(axis=1, keepdims=True), 1.0)
        r = ml.ratings
        liked = r[r["rating"] >= 4]
        self.users = np.sort(r["user_id"].unique())
        self.row = {int(u): n for n, u in enumerate(self.users)}
        pref = np.full((len(self.users), len(genres)), 0.5)
        np.add.at(pref, liked["user_id"].map(self.row).to_numpy(),
                  self.m[liked["item_id"].map(self.col).to_numpy()])
        self.pref = pref / pref.sum(axis=1, keepdims=True)
        stats = r.groupby("item_id")["rating"].agg(["sum", "size"])
        mean = ((stats["sum"] + 5 * r["rating"].mean()) / (stats["size"] + 5)).reindex(
            self.items).fillna(r["rating"].mean()).to_numpy()
        self.quality = (mean - mean.mean()) / mean.std()
        self.popularity = stats["size"].reindex(self.items).fillna(0).to_numpy() + 1.0
        self.temperature = rng.lognormal(0.0, 0.3, len(self.users))
        self.activity = r.groupby("user_id").size().reindex(self.users).to_numpy(float)
        self.drift, self.outside, self.rng = drift, outside, rng

    def visitors(self, n: int) -> np.ndarray:
        return self.rng.choice(self.users, n, p=self.activity / self.activity.sum())

    def react(self, user: int, recs: list[int]) -> list[int]:
        u = self.row[int(user)]
        watched = []
        for rank, item in enumerate(recs):
            j = self.col.get(int(item))
            if j is None:
                continue
            appeal = 8.0 * self.pref[u] @ self.m[j] + 0.8 * self.quality[j] - 2.0
            p = (1.0 / np.log2(rank + 2)) / (1.0 + np.exp(-appeal / self.temperature[u]))
            if self.rng.random() < p:
                watched.append(int(item))
                if self.drift:
                    self.pref[u] = (1 - self.drift) * self.pref[u] + self.drift * self.m[j]
        if self.outside:
            p = self.popularity / self.popularity.sum()
            watched += self.rng.choice(self.items, self.outside, p=p).astype(int).tolist()
        return watched


def closed_loop(policy: str, world: GenreWorld, ml, base: pd.DataFrame, cycles: int,
                visits: int, seed: int) -> list[float]:
    """Exposure Gini per cycle of `policy` refitted every cycle on its own traffic."""
    frame, now, ginis = base, pd.Timestamp(base["ts"].max()), []
    position = {int(i): n for n, i in enumerate(world.items)}
    for cycle in range(cycles):
        model = POLICIES[policy](seed + cycle).fit(frame, ml.items, ml.users)
        visitors = world.visitors(visits)
        lists = model.recommend_many(np.unique(visitors).tolist(), 10)
        counts = np.zeros(len(world.items))
        rows = []
        for user in visitors:
            recs = lists[int(user)]
            for item in recs:
                if (j := position.get(int(item))) is not None:
                    counts[j] += 1
            rows += [(int(user), i, now, np.nan, True) for i in world.react(user, recs)]
        ginis.append(gini(counts))
        now += pd.Timedelta(hours=3)
        frame = pd.concat([frame, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True)
        frame = frame.drop_duplicates(["user_id", "item_id"], keep="first")
    return ginis


def net_change(ginis: list[float], ends: int = 3) -> float:
    """Mean change per cycle from the first `ends` cycles to the last `ends` (where the long
    run ends up), robust to a loop that concentrates early and then levels off, which a
    straight line through every cycle averages away."""
    g = np.asarray(ginis)
    return float((g[-ends:].mean() - g[:ends].mean()) / (len(g) - ends))


def spearman_ci(f: np.ndarray, r: np.ndarray, seed: int = 0) -> tuple[float, list[float]]:
    """Spearman's rho and its percentile bootstrap 95% interval over the points."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(2000):
        i = rng.integers(0, len(f), len(f))
        if np.ptp(f[i]) > 0 and np.ptp(r[i]) > 0:
            boot.append(stats.spearmanr(f[i], r[i]).statistic)
    return (float(stats.spearmanr(f, r).statistic),
            [round(float(x), 3) for x in np.percentile(boot, [2.5, 97.5])])


def forecast_section(args) -> dict:
    ml = load(ROOT / "var" / "cache")
    points: list[dict[str, Any]] = []
    for seed in range(args.forecast_seeds):
        # a young platform: a seeded share of MovieLens as the history both loops start from,
        # so a few cycles of the policy's own traffic can move it
        sample = ml.ratings.sample(frac=args.base_share, random_state=seed)
        base = build_interactions(sample, sample.iloc[:0][["user_id", "item_id", "ts"]])
        for world_name, knobs in WORLDS.items():
            for policy in POLICIES:
                world = GenreWorld(ml, np.random.default_rng([seed, len(points)]), **knobs)
                ginis = closed_loop(policy, world, ml, base, args.long_cycles, 300, seed)
                realised = trend(ginis, CFG.echo_slope_max)
                if realised.slope is None:  # under 3 cycles: no slope to compare
                    sys.exit(f"--long-cycles {args.long_cycles}: {realised.reason}")
                fc = forecast_gini_slope(functools.partial(POLICIES[policy], seed), base, ml.items,
                                         ml.users, ml.ratings, SimSettings(seed=100 + seed),
                                         steps=5, visits=300, k=10, limit=CFG.echo_slope_max)
                change = net_change(ginis)
                points.append({"policy": policy, "world": world_name, "seed": seed,
                               "forecast": fc.slope, "forecast_ci": [fc.ci_low, fc.ci_high],
                               "realised": realised.slope,
                               "realised_ci": [realised.ci_low, realised.ci_high],
                               "realised_net_change": change,
                               "realised_gini": [round(g, 4) for g in ginis],
                               "covered": bool(fc.ci_low <= realised.slope <= fc.ci_high),
                               "covered_net_change": bool(fc.ci_low <= change <= fc.ci_high)})
                print(f"{policy:<11}{world_name:<10}{seed:>5}{fc.slope:>+11.4f} "
                      f"[{fc.ci_low:+.4f}, {fc.ci_high:+.4f}]{realised.slope:>+11.4f}"
                      f"{change:>+11.4f}", flush=True)
    f = np.array([p["forecast"] for p in points])
    rho, ci = spearman_ci(f, np.array([p["realised"] for p in points]))
    rho_net, ci_net = spearman_ci(f, np.array([p["realised_net_change"] for p in points]))
    coverage = float(np.mean([p["covered"] for p in points]))
    coverage_net = float(np.mean([p["covered_net_change"] for p in points]))
    print(f"\nforecast vs realised over {len(points)} points (base: {args.base_share:.0%} of "
          f"MovieLens, {args.long_cycles} cycles):\n  least-squares slope:  Spearman "
          f"{rho:.3f} {ci}, forecast interval covers it in {coverage:.1%}\n  net change per "
          f"cycle: Spearman {rho_net:.3f} {ci_net}, covered in {coverage_net:.1%}")
    return {"forecast_rank_correlation": round(rho, 3), "forecast_rank_correlation_ci": ci,
            "forecast_interval_coverage": round(coverage, 3),
            "forecast_rank_correlation_net_change": round(rho_net, 3),
            "forecast_rank_correlation_net_change_ci": ci_net,
            "forecast_interval_coverage_net_change": round(coverage_net, 3),
            "forecast_base_share": args.base_share, "forecast_points": points}


def wilson(hits: int, n: int) -> list[float]:
    from statsmodels.stats.proportion import proportion_confint
    return [round(float(x), 4) for x in proportion_confint(hits, n, method="wilson")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--forecast-seeds", type=int, default=3,
                        help="seeds per policy x user world (0: skip the forecast section)")
    parser.add_argument("--long-cycles", type=int, default=20)
    parser.add_argument("--base-share", type=float, default=0.1,
                        help="share of MovieLens ratings both loops start from")
    args = parser.parse_args()
    drop = [traffic_drop(1000 + i) for i in range(args.runs)]
    growth = [catalog_growth(2000 + i) for i in range(args.runs)]
    echo = [traffic_drop(3000 + i, rising=0.08) for i in range(args.runs)]
    weak = [traffic_drop(4000 + i, rising=0.03) for i in range(args.runs)]
    n = args.runs

    def rate(rows: list[dict], key: str) -> dict:
        hits = sum(bool(r[key]) for r in rows)
        return {"rate": round(hits / n, 4), "hits": hits, "ci95": wilson(hits, n)}

    result = {
        "runs": n, "windows": WINDOWS,
        "false_echo_rate_on_traffic_drop": rate(drop, "detected")["rate"],
        "false_echo_rate_raw_counts": rate(drop, "raw_detected")["rate"],
        "false_echo_rate_on_catalog_growth": rate(growth, "false_echo")["rate"],
        "false_slope_rate_on_catalog_growth": rate(growth, "false_slope")["rate"],
        "false_slope_rate_todays_catalog": rate(growth, "false_slope_today")["rate"],
        "echo_detection_rate": rate(echo, "detected")["rate"],
        "echo_detection_rate_weak": rate(weak, "detected")["rate"],
        "median_gini_slope": {
            name: float(np.median([r["gini_slope"] for r in rows if r["gini_slope"] is not None]))
            for name, rows in (("traffic_drop", drop), ("real_echo", echo), ("weak_echo", weak))},
        "not_enough_data": {"traffic_drop": sum(r["not_enough_data"] for r in drop),
                            "real_echo": sum(r["not_enough_data"] for r in echo + weak)},
        "detail": {"traffic_drop": rate(drop, "detected"), "raw_counts": rate(drop, "raw_detected"),
                   "catalog_growth_echo": rate(growth, "false_echo"),
                   "catalog_growth": rate(growth, "false_slope"),
                   "todays_catalog": rate(growth, "false_slope_today"),
                   "real_echo": rate(echo, "detected"), "weak_echo": rate(weak, "detected")},
        "runs_detail": {"traffic_drop": drop, "catalog_growth": growth, "real_echo": echo,
                        "weak_echo": weak}}
    rows = [("traffic drop, policy unchanged", "rarefied (platform)", "traffic_drop"),
            ("", "raw counts (before)", "raw_counts"),
            ("catalog grows, policy uniform", "echo detected", "catalog_growth_echo"),
            ("", "slope != 0, as of window", "catalog_growth"),
            ("", "slope != 0, today's catalog", "todays_catalog"),
            ("exponent +0.08 / window", "rarefied (platform)", "real_echo"),
            ("exponent +0.03 / window", "rarefied (platform)", "weak_echo")]
    print(f"{n} seeded runs per case, {WINDOWS} windows each\n")
    print(f"{'case':<34}{'figure':<28}{'flagged':>9}{'rate':>8}  95% CI")
    for case, figure, key in rows:
        d = result["detail"][key]
        print(f"{case:<34}{figure:<28}{d['hits']:>9}{d['rate']:>8.3f}  "
              f"[{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]")
    print(f"\nnot enough data (fewer than {CFG.echo_min_windows} windows with "
          f"{CFG.echo_sample_min}+ items): {result['not_enough_data']}")
    if args.forecast_seeds:
        print(f"\n{'policy':<11}{'world':<10}{'seed':>5}{'forecast [95% CI]':>30}"
              f"{'realised':>11}{'net/cycle':>11}")
        result |= forecast_section(args)
    out = ROOT / "var" / "bench" / "feedback_validity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
