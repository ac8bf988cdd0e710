"""The analytics cycle: lake -> analytics snapshot per window -> the shared store + gauges.

The scheduler (`jobs.schedule`) runs this cycle every `schedule.analyze_interval` in its own
process and exports the headline figures (`gauge_values`) as Prometheus gauges; `reco analyze`
or `ray job submit -- python -m jobs.analyze` runs it by hand (without --once: in a loop).
Each cycle probes `/health` (the SLA's uptime), computes a snapshot of the window ending now,
writes it to `analytics/snapshots/<end>.json` and `analytics/latest.json` in the shared store,
and adds the users the combined spam flag caught to the quarantine, which the retrain job
reads.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import httpx
import pandas as pd
from pydantic import BaseModel, ConfigDict

from backend.analytics import spam
from backend.analytics.engine import AnalyticsLogic, RecoLog
from backend.analytics.snapshot import Snapshot
from backend.core.errors import RecoError
from backend.core.layout import Keys
from backend.core.settings import Settings
from backend.core.store import Store
from backend.data import catalog
from backend.data.lake import Lake
from backend.data.movielens import load as load_movielens
from registry import open_experiments, open_quarantine

log = logging.getLogger(__name__)


class Probe(BaseModel):
    """One health probe of the API (a record of the `analytics/probes` log)."""

    ts: str  # ISO 8601, UTC
    ok: bool
    detail: str | None  # the reported status, the HTTP status or the error's type
    ms: float
    split: float | None = None  # A's share the API reported in force
    # per variant: (recommendation requests, of which 5xx) as /metrics counted them so far
    requests: dict[str, tuple[float, float]] | None = None


def probe(settings: Settings, timeout: float = 5.0) -> Probe:
    """One health probe of the API, appended to the `analytics/probes` log: up = HTTP 200
    and status ok or degraded (degraded still serves recommendations)."""
    url = f"http://{settings.serve.host}:{settings.serve.port}/health"
    t0 = time.perf_counter()
    split = None
    try:
        r = httpx.get(url, timeout=timeout)
        ok = r.status_code == 200 and r.json().get("status") in ("ok", "degraded")
        detail = r.json().get("status") if r.status_code == 200 else f"http {r.status_code}"
        reported = r.json().get("split") if ok else None
        if isinstance(reported, int | float) and not isinstance(reported, bool):
            split = float(reported)
    except (httpx.HTTPError, ValueError) as exc:
        ok, detail = False, type(exc).__name__
    ms = round((time.perf_counter() - t0) * 1000, 2)
    rec = Probe(ts=datetime.now(UTC).isoformat(), ok=ok, detail=detail, ms=ms, split=split,
                requests=request_counts(url.removesuffix("/health"), timeout) if ok else None)
    settings.shared_store().log(Keys.probes).append(rec.model_dump(mode="json"))
    return rec


def request_counts(base: str, timeout: float) -> dict[str, tuple[float, float]] | None:
    """Per variant, the recommendation requests and the 5xx among them that `/metrics` has
    counted (summed over ingress replicas); None when it cannot be read."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        r = httpx.get(base + "/metrics", timeout=timeout)
        if r.status_code != 200:
            return None
        text = r.text
        out: dict[str, tuple[float, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name != "reco_requests_total" or not labels.get("variant") or \
                        not labels.get("route", "").startswith("/recommend"):
                    continue
                total, errors = out.get(labels["variant"], (0.0, 0.0))
                failed = labels.get("status", "").startswith("5")
                out[labels["variant"]] = (total + sample.value,
                                          errors + (sample.value if failed else 0.0))
        return out
    except (httpx.HTTPError, ValueError):
        return None


def read_probes(settings: Settings) -> pd.DataFrame:
    return pd.DataFrame(settings.shared_store().log(Keys.probes).read(),
                        columns=["ts", "ok", "detail", "ms", "requests"])


def analyze_once(settings: Settings, end: pd.Timestamp | None = None,
                 split: float | None = None) -> Snapshot:
    """Compute and write the snapshot of the window ending at `end` (default now). `split`:
    A's share in force, for the sample-ratio check (the API's, from `probe`); without it the
    configured one."""
    end = end or pd.Timestamp.now(tz="UTC")
    lake = Lake.open(settings)
    cache = settings.lake_cache  # each run reads the rows landed since the last one
    reco = RecoLog.from_table(lake.read_table(
        "events.reco", ["ts", "user_id", "variant", "latency_ms", "items", "experiment",
                        "epoch"], cache))
    watch = lake.read("events.watch", ["ts", "user_id", "item_id"], cache)
    rating = lake.read("events.rating", ["ts", "user_id", "item_id", "rating"], cache)
    ml = load_movielens(settings.data_cache)
    items, users = catalog.load_catalog(settings, ml.items), ml.users
    t0 = time.perf_counter()
    split = settings.serve.split if split is None else split
    experiments = open_experiments(settings)
    changes = [pd.Timestamp(e.ts) for e in experiments.events() if e.action == "split"]
    running = experiments.running()
    snap = AnalyticsLogic(settings.analytics, split, changes, list(settings.variants),
                          running).snapshot(
        reco, watch, rating, items, users, end, read_probes(settings))
    snap = snap.model_copy(update={"compute_seconds": round(time.perf_counter() - t0, 3)})
    store = settings.shared_store()
    stamp = Keys.snapshot_stamp(end)
    body = snap.model_dump(mode="json")
    store.put_json(Keys.snapshot(stamp), body)
    store.put_json(Keys.latest_snapshot, body)
    flagged = snap.spam.flagged.combined
    if flagged:
        log.info("quarantine flagged=%d added=%s", len(flagged), quarantine(settings, snap))
    keep_from = history_start(end, settings.analytics.history_days,
                              None if running is None else running.start)
    try:  # upkeep: the snapshot stands whether or not it succeeds (the next cycle retries)
        snapshots, probes = prune_history(store, keep_from)
        if snapshots or probes:
            log.info("history pruned before=%s snapshots=%d probes=%d", keep_from,
                     snapshots, probes)
    except RecoError as exc:
        log.warning("history not pruned before=%s error=%s", keep_from, exc)
    log.info("snapshot written end=%s recommendations=%d flagged=%d seconds=%s", stamp,
             snap.counts.recommendations, len(flagged), snap.compute_seconds)
    return snap


def history_start(end: pd.Timestamp, days: float, running_since: datetime | None
                  ) -> pd.Timestamp:
    """The oldest time the history keeps: `days` before `end`, or earlier still to the
    start of the running experiment, whose guardrails read its probes."""
    end = end.tz_convert("UTC") if end.tzinfo else end.tz_localize("UTC")
    start = end - pd.Timedelta(days=days)
    return start if running_since is None else min(start, pd.Timestamp(running_since))


def prune_history(store: Store, before: pd.Timestamp) -> tuple[int, int]:
    """Delete the snapshots whose window ended before `before` and the health probes taken
    before it (the newest probe stays: the log numbers on from it); returns how many of
    each went."""
    cutoff = Keys.snapshot_stamp(before)
    old = [k for k in store.keys(Keys.snapshots)
           if k.endswith(".json") and k.rsplit("/", 1)[-1].removesuffix(".json") < cutoff]
    for key in old:
        store.delete(key)
    probes = store.log(Keys.probes)
    kept = sum(pd.Timestamp(r["ts"]) >= before for r in probes.read())
    return len(old), probes.prune(max(kept, 1))


def quarantine(settings: Settings, snap: Snapshot) -> list[int]:
    """The users the snapshot's combined spam flag caught into the quarantine, with their
    evidence; returns those newly quarantined."""
    return open_quarantine(settings).flag_detected(
        spam.evidence(snap.spam, snap.window.end), pd.Timestamp(snap.window.start))


def cycle(settings: Settings) -> Snapshot:
    """One analytics cycle: probe the API, then write the snapshot of the window ending now."""
    return analyze_once(settings, split=probe(settings).split)


VARIANT_GAUGES = ("coverage", "gini", "top10_share", "exposure_gini", "diversity",
                  "head_tail_ratio", "echo_gini_slope", "echo_rising", "tail_starved",
                  "latency_p95_ms")
GAUGE_NAMES = (*VARIANT_GAUGES, "watch_through", "ab_p_value", "srm_mismatch", "spam_flagged",
               "uptime")
"""The exported figures; the alert rules (deploy/prometheus/rules.yml) read the 0/1 states
(`echo_rising`, `tail_starved`, `srm_mismatch`) the platform computes with its configured
limits, so the rules hold no second copy of a threshold."""


class GaugeValue(BaseModel):
    """One headline figure as a Prometheus gauge sample, tagged with its variant."""

    model_config = ConfigDict(frozen=True)

    name: str
    variant: str
    value: float

    @property
    def tags(self) -> dict[str, str]:
        return {"variant": self.variant}


def gauge_values(snap: Snapshot) -> list[GaugeValue]:
    """Every headline figure present in the snapshot (a None figure exports no sample)."""
    out: list[GaugeValue] = []
    for v, f in snap.fairness.items():
        tail, echo = snap.tail.get(v), snap.echo.variants.get(v)
        trend = echo.gini_trend if echo else None
        latency = snap.sla.latency_ms.get(v)
        figures = (f.coverage, f.gini, f.top10_share, f.exposure_gini, f.diversity,
                   tail.head_tail_ratio if tail else None,
                   trend.slope if trend else None,
                   float(trend.detected) if trend and trend.slope is not None else None,
                   float(tail.starved) if tail and (tail.head_tail_ratio is not None
                                                    or tail.starved) else None,
                   latency.p95 if latency else None)
        out += [GaugeValue(name=name, variant=v, value=x)
                for name, x in zip(VARIANT_GAUGES, figures, strict=True) if x is not None]
    out += [GaugeValue(name="watch_through", variant=v, value=arm.watch_through)
            for v, arm in snap.ab.arms.items() if arm.watch_through is not None]
    out += [GaugeValue(name="ab_p_value", variant=t, value=c.sequential.p_value)
            for t, c in snap.ab.comparisons.items() if c.sequential.p_value is not None]
    srm = snap.ab.srm
    if srm is not None and srm.p_value is not None:
        out.append(GaugeValue(name="srm_mismatch", variant="all", value=float(srm.mismatch)))
    out.append(GaugeValue(name="spam_flagged", variant="all",
                          value=len(snap.spam.flagged.combined)))
    if snap.sla.uptime is not None:
        out.append(GaugeValue(name="uptime", variant="all", value=snap.sla.uptime))
    return out
