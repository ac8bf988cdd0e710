"""The analytics cycle: lake -> analytics snapshot per window -> `var/analytics/` + gauges.

The scheduler (`jobs.schedule`) runs this cycle every `schedule.analyze_interval` in its own
process and exports the headline figures (`gauge_values`) as Prometheus gauges; `reco analyze`
or `ray job submit -- python -m jobs.analyze` runs it by hand (without --once: in a loop).
Each cycle probes `/health` (the SLA's uptime), computes a snapshot of the window ending now,
writes it to `var/analytics/snapshots/<end>.json` and `latest.json`, and adds the users the
combined spam flag caught to `var/analytics/quarantine.json`, which the retrain job reads.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pandas as pd

from backend.analytics.engine import AnalyticsLogic, RecoLog
from backend.core.files import append_jsonl, read_jsonl, write_json
from backend.core.settings import Settings
from backend.data import catalog
from backend.data.lake import Lake
from backend.data.movielens import load as load_movielens

log = logging.getLogger(__name__)


def probe(settings: Settings, timeout: float = 5.0) -> dict[str, Any]:
    """One health probe of the API, appended to `probes.jsonl`: up = HTTP 200 and status ok
    or degraded (degraded still serves recommendations)."""
    url = f"http://{settings.serve.host}:{settings.serve.port}/health"
    t0 = time.perf_counter()
    try:
        r = httpx.get(url, timeout=timeout)
        ok = r.status_code == 200 and r.json().get("status") in ("ok", "degraded")
        detail = r.json().get("status") if r.status_code == 200 else f"http {r.status_code}"
    except (httpx.HTTPError, ValueError) as exc:
        ok, detail = False, type(exc).__name__
    rec = {"ts": datetime.now(UTC).isoformat(), "ok": ok, "detail": detail,
           "ms": round((time.perf_counter() - t0) * 1000, 2)}
    append_jsonl(settings.layout.probes, rec)
    return rec


def read_probes(settings: Settings) -> pd.DataFrame:
    return pd.DataFrame(read_jsonl(settings.layout.probes),
                        columns=["ts", "ok", "detail", "ms"])


def analyze_once(settings: Settings, end: pd.Timestamp | None = None) -> dict[str, Any]:
    """Compute and write the snapshot of the window ending at `end` (default now)."""
    end = end or pd.Timestamp.now(tz="UTC")
    lake = Lake(settings.lake_root)
    cache = settings.lake_cache  # each run reads the rows landed since the last one
    reco = RecoLog.from_table(lake.read_table(
        "events.reco", ["ts", "user_id", "variant", "latency_ms", "items"], cache))
    watch = lake.read("events.watch", ["ts", "user_id", "item_id"], cache)
    rating = lake.read("events.rating", ["ts", "user_id", "item_id", "rating"], cache)
    ml = load_movielens(settings.data_cache)
    items, users = catalog.load_catalog(settings, ml.items), ml.users
    t0 = time.perf_counter()
    snap = AnalyticsLogic(settings.analytics, settings.serve.split).snapshot(
        reco, watch, rating, items, users, end, read_probes(settings))
    snap["compute_seconds"] = round(time.perf_counter() - t0, 3)
    layout = settings.layout
    layout.snapshots.mkdir(parents=True, exist_ok=True)
    stamp = end.strftime("%Y%m%dT%H%M%SZ")
    write_json(layout.snapshot(stamp), snap)
    write_json(layout.latest_snapshot, snap)
    flagged = snap["spam"]["flagged"]["combined"]
    if flagged:
        update_quarantine(settings, flagged, stamp)
    log.info("snapshot written end=%s recommendations=%d flagged=%d seconds=%s", stamp,
             snap["counts"]["recommendations"], len(flagged), snap["compute_seconds"])
    return snap


def cycle(settings: Settings) -> dict[str, Any]:
    """One analytics cycle: probe the API, then write the snapshot of the window ending now."""
    probe(settings)
    return analyze_once(settings)


def update_quarantine(settings: Settings, users: list[int], stamp: str) -> None:
    """Flagged users stay quarantined (union) until an operator releases them."""
    path = settings.layout.quarantine
    current = json.loads(path.read_text()) if path.exists() else {"users": []}
    merged = sorted(set(current.get("users", [])) | set(users))
    write_json(path, {"users": merged, "updated": stamp,
                  "source": "combined spam flag (robust RDMA and volume outlier)"})


GAUGES = {  # gauge name -> path in the snapshot, per variant where {v} appears
    "coverage": ("fairness", "{v}", "coverage"),
    "gini": ("fairness", "{v}", "gini"),
    "top10_share": ("fairness", "{v}", "top10_share"),
    "exposure_gini": ("fairness", "{v}", "exposure_gini"),
    "diversity": ("fairness", "{v}", "diversity"),
    "head_tail_ratio": ("tail", "{v}", "head_tail_ratio"),
    "echo_gini_slope": ("echo", "{v}", "gini_trend", "slope"),
}


GAUGE_NAMES = (*GAUGES, "watch_through", "ab_p_value", "spam_flagged", "uptime")


def gauge_values(snap: dict) -> list[tuple[str, dict[str, str], float]]:
    """(name, tags, value) for every headline figure present in the snapshot."""
    out = []
    for v in snap.get("fairness", {}):
        for name, path in GAUGES.items():
            node: Any = snap
            for key in path:
                node = node.get(key.format(v=v)) if isinstance(node, dict) else None
            if isinstance(node, (int, float)):
                out.append((name, {"variant": v}, float(node)))
    for v, arm in snap.get("ab", {}).get("arms", {}).items():
        if arm.get("watch_through") is not None:
            out.append(("watch_through", {"variant": v}, float(arm["watch_through"])))
    p = snap.get("ab", {}).get("sequential", {}).get("p_value")
    if p is not None:
        out.append(("ab_p_value", {"variant": "all"}, float(p)))
    out.append(("spam_flagged", {"variant": "all"},
                float(len(snap.get("spam", {}).get("flagged", {}).get("combined", [])))))
    up = snap.get("sla", {}).get("uptime")
    if up is not None:
        out.append(("uptime", {"variant": "all"}, float(up)))
    return out
