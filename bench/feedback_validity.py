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

    python bench/feedback_validity.py [--runs 60]
Writes var/bench/feedback_validity.json (keys: false_echo_rate_on_traffic_drop,
false_echo_rate_raw_counts, false_echo_rate_on_catalog_growth,
false_slope_rate_on_catalog_growth, false_slope_rate_todays_catalog, echo_detection_rate,
echo_detection_rate_weak, median_gini_slope, runs, not_enough_data).
The forecast-vs-realised scenarios of the issue are not in this bench yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

from backend.analytics import feedback  # noqa: E402
from backend.analytics.window import LogWindow, RecoLog  # noqa: E402
from backend.core.settings import AnalyticsSettings  # noqa: E402
from backend.ml.metrics.feedback import trend  # noqa: E402

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
        offsets = np.linspace(0, 3600 - 1, len(block)) if len(block) else []
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


def wilson(hits: int, n: int) -> list[float]:
    from statsmodels.stats.proportion import proportion_confint
    return [round(float(x), 4) for x in proportion_confint(hits, n, method="wilson")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=60)
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
    out = ROOT / "var" / "bench" / "feedback_validity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
