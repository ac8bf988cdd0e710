"""Time to compute one full analytics snapshot over 1M recommendation events.

The log is synthetic but shaped like the platform's: MovieLens users and catalog, two arms,
10 items per response drawn from a popularity-skewed distribution, 2 hours of timestamps (the
window is the last hour, the echo trend looks at six 20-minute windows), and watches and
ratings for 10% of the recommended items. The reference is the same snapshot over 100k
events (so the ratio shows how it scales). Target: under 2 s for 1M.

    python bench/analytics.py [--events 1000000]
Writes var/bench/analytics.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

from backend.analytics.engine import AnalyticsLogic, RecoLog  # noqa: E402
from backend.core.settings import AnalyticsSettings  # noqa: E402
from backend.data.movielens import load  # noqa: E402

END = pd.Timestamp("2026-01-01T12:00:00Z")


def synthetic(n: int, items: pd.DataFrame, users: pd.DataFrame, seed: int = 0):
    rng = np.random.default_rng(seed)
    catalog = items["item_id"].to_numpy()
    weights = 1.0 / (np.arange(len(catalog)) + 5.0)
    weights /= weights.sum()
    uids = rng.choice(users["user_id"].to_numpy(), size=n)
    variant = np.where(uids % 2 == 0, "A", "B")
    ts = END - pd.to_timedelta(rng.uniform(0, 7200, n), unit="s")
    flat = rng.choice(catalog, size=n * 10, p=weights)
    offsets = np.arange(0, n * 10 + 1, 10)
    table = pa.table({
        "ts": pa.array(ts.as_unit("us")), "user_id": uids, "variant": variant,
        "latency_ms": rng.gamma(2.0, 3.0, n),
        "items": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat))})
    pick = rng.random(n * 10) < 0.1
    rows = np.repeat(np.arange(n), 10)[pick]
    watch = pd.DataFrame({"ts": ts[rows] + pd.Timedelta(seconds=30), "user_id": uids[rows],
                          "item_id": flat[pick]})
    rating = watch.assign(rating=rng.integers(1, 6, len(watch)))
    return table, watch, rating


def time_snapshot(n: int, items: pd.DataFrame, users: pd.DataFrame) -> dict:
    table, watch, rating = synthetic(n, items, users)
    logic = AnalyticsLogic(AnalyticsSettings(window_minutes=60, echo_windows=6))
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        snap = logic.snapshot(RecoLog.from_table(table), watch, rating, items, users, END)
        runs.append(time.perf_counter() - t0)
    return {"events": n, "watches": len(watch), "seconds": round(min(runs), 3),
            "in_window": snap.counts.recommendations,
            "coverage_all": round(snap.fairness["all"].coverage, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    ml = load(ROOT / "var" / "cache")
    rows = [time_snapshot(n, ml.items, ml.users) for n in (args.events // 10, args.events)]
    print(f"{'reco events':>12}{'watches':>10}{'in window':>11}{'seconds':>9}")
    for r in rows:
        print(f"{r['events']:>12,}{r['watches']:>10,}{r['in_window']:>11,}{r['seconds']:>9}")
    ratio = rows[1]["seconds"] / max(rows[0]["seconds"], 1e-9)
    met = rows[1]["seconds"] < 2.0
    print(f"\n{args.events:,} events: {rows[1]['seconds']} s ({ratio:.1f}x the time of "
          f"{rows[0]['events']:,}); target < 2 s: {'met' if met else 'MISSED'}")
    out = ROOT / "var" / "bench" / "analytics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": rows, "ratio_10x_events": round(ratio, 2),
                               "target_under_2s": met}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
