"""What the pages read: analytics snapshots, the registry, the API's /health and /metrics.

Loaders are cached for a few seconds (`st.cache_data(ttl=...)`); snapshots load as typed
`Snapshot` models (`backend.analytics.snapshot`), and the frame builders below them are pure
functions of one, unit-tested without Streamlit. Nothing here computes a metric: every figure
comes from the analyze job's snapshots or the API.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import pandas as pd
import streamlit as st
from pydantic import ValidationError

from backend.analytics.snapshot import Snapshot, Trend
from backend.core.errors import RecoError
from backend.core.layout import Keys
from backend.core.requests import RetrainRequest, pending_retrain
from backend.core.settings import Settings
from backend.core.store import Store
from backend.data.deadletters import reason as dead_letter_reason
from backend.data.events import EVENT_MODELS
from backend.data.lake import Lake
from backend.serving.schemas import HealthResponse
from registry import (
    Manifest,
    Registry,
    RegistryError,
    open_experiments,
    open_quarantine,
    open_registry,
)

REFRESH = "5s"
log = logging.getLogger(__name__)
RANGES = {"15 min": 15, "1 hour": 60, "6 hours": 360, "24 hours": 1440, "7 days": 10080}


def range_minutes() -> int:
    """The sidebar's time range (kept in session state across pages and refreshes)."""
    return RANGES[st.session_state.get("time_range", "1 hour")]


@st.cache_resource
def settings() -> Settings:
    return Settings()


def api_url() -> str:
    s = settings()
    return f"http://{s.serve.host}:{s.serve.port}"


@st.cache_data(ttl=5)
def latest_snapshot() -> Snapshot | None:
    return read_snapshot(settings().shared_store(), Keys.latest_snapshot)


@st.cache_data(ttl=5)
def snapshot_history(minutes: int | None = None, limit: int = 96) -> list[Snapshot]:
    """The last `limit` snapshots, of the last `minutes` when given."""
    since = None if minutes is None else \
        pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=minutes)
    return snapshots(settings().shared_store(), limit, since)


def snapshots(store: Store, limit: int | None = None, since: pd.Timestamp | None = None
              ) -> list[Snapshot]:
    """The stored snapshots (the last `limit`; with `since`, those whose window ended then
    or later, listed from there on: a key names its window's end), oldest first, the
    unreadable ones skipped."""
    after = None if since is None else f"{Keys.snapshots}/{Keys.snapshot_stamp(since)}"
    keys = [k for k in store.keys(Keys.snapshots, after=after) if k.endswith(".json")]
    keys = keys[-limit:] if limit else keys
    return [snap for key, body in zip(keys, store.get_many(keys), strict=True)
            if (snap := parse_snapshot(body, key)) is not None]


def read_snapshot(store: Store, key: str) -> Snapshot | None:
    """The snapshot at `key` (see `parse_snapshot`); None also when the store is away."""
    try:
        return parse_snapshot(store.get(key), key)
    except RecoError as exc:
        log.warning("snapshot unreadable key=%s error=%s", key, exc)
        return None


def parse_snapshot(body: bytes | None, where: str) -> Snapshot | None:
    """The snapshot in `body`; None when there is none yet, or it was written in a shape this
    version cannot read (skipped with a warning: the pages show the snapshots they can
    read)."""
    if body is None:
        return None
    try:
        return Snapshot.model_validate_json(body)
    except ValidationError as exc:  # also a torn or non-JSON file
        log.warning("snapshot skipped key=%s errors=%d first=%s", where, exc.error_count(),
                    exc.errors()[0]["msg"])
        return None


@st.cache_data(ttl=5)
def health() -> HealthResponse | None:
    """The API's /health, typed; None when it does not answer or answers something else."""
    try:
        return HealthResponse.model_validate_json(
            httpx.get(api_url() + "/health", timeout=3).content)
    except (httpx.HTTPError, ValidationError):
        return None


@st.cache_data(ttl=5)
def prometheus() -> pd.DataFrame:
    """The API's /metrics as rows (name, labels..., value); empty when the API is down."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(api_url() + "/metrics", timeout=3).text
    except httpx.HTTPError:
        return pd.DataFrame(columns=["name", "value"])
    rows = [{"name": s.name, **s.labels, "value": s.value}
            for fam in text_string_to_metric_families(text) for s in fam.samples]
    return pd.DataFrame(rows or [], columns=None if rows else ["name", "value"])


ALERT_COLUMNS = ["alert", "state", "labels", "summary", "since"]


@st.cache_data(ttl=5)
def alerts(base_url: str) -> pd.DataFrame | None:
    """The pending and firing alerts of the Prometheus at `base_url` (the shipped rules,
    deploy/prometheus/rules.yml); None when it cannot be reached."""
    try:
        r = httpx.get(base_url.rstrip("/") + "/api/v1/alerts", timeout=3)
        r.raise_for_status()
        found = r.json()["data"]["alerts"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    rows = [{"alert": a["labels"].get("alertname", ""), "state": a["state"],
             "labels": ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items())
                                 if k not in ("alertname", "severity")),
             "summary": a.get("annotations", {}).get("summary", ""),
             "since": a.get("activeAt", "")} for a in found
            if a.get("state") in ("pending", "firing")]
    frame = pd.DataFrame(rows, columns=ALERT_COLUMNS)
    return frame.sort_values(["state", "alert"], ascending=[True, True], ignore_index=True)


def audit_frame(var_dir: str, last: int | None = 50) -> pd.DataFrame:
    """The newest `last` (None: every) operator actions, sign-ins and experiment changes,
    newest first (columns: ts, actor, action, experiment, detail). Not cached: an operator
    looks here right after acting."""
    events = open_experiments(settings()).events()
    events = (events[-last:] if last is not None else events)[::-1]
    return pd.DataFrame([{"ts": e.ts.isoformat(timespec="seconds"), "actor": e.actor,
                          "action": e.action, "experiment": e.experiment or "",
                          "detail": json.dumps(e.detail, sort_keys=True)} for e in events],
                        columns=["ts", "actor", "action", "experiment", "detail"])


# (variant, version) -> (what it was checked against, manifest or None, why refused): a
# verdict holds while the version's stored objects and the public key are unchanged, so a
# refresh does not download every model again
_VERDICTS: dict[tuple[str, str], tuple[str, Manifest | None, str]] = {}


def verified(reg: Registry, variant: str, version: str) -> tuple[Manifest | None, str]:
    """The version's manifest if it verifies, else None and why; verified again only when
    its stored objects (`Registry.stamp`) or the public key changed."""
    try:
        against = reg.stamp(variant, version) + reg.public_key.read_text()
        kept = _VERDICTS.get((variant, version))
        if kept is None or kept[0] != against:
            try:
                kept = against, reg.verify(variant, version), ""
            except RegistryError as exc:  # a verdict: shown as a refused version, with why
                kept = against, None, exc.detail
            _VERDICTS[(variant, version)] = kept
    except Exception as exc:  # the store or the key unreadable: no verdict, asked again
        return None, str(exc)
    return kept[1], kept[2]


@st.cache_data(ttl=10)
def registry_versions(var_dir: str) -> pd.DataFrame:
    reg = open_registry(settings())
    rows = []
    for variant in reg.variants():
        aliases = reg.aliases(variant)
        for version in reg.versions(variant):
            manifest, why = verified(reg, variant, version)
            metrics = manifest.metrics if manifest else None
            prov = manifest.provenance if manifest else None
            rows.append({"variant": variant, "version": version,
                         "alias": ",".join(aliases.tags(version)),
                         "signature": "valid" if manifest else f"REFUSED: {why}",
                         "ndcg": metrics.ndcg if metrics else None,
                         "coverage": metrics.coverage if metrics else None,
                         "gini": metrics.gini if metrics else None,
                         "rows": prov.rows if prov else None,
                         "git": prov.git_sha[:10] if prov else "",
                         "created": manifest.created_at.isoformat() if manifest else None})
    return pd.DataFrame(rows).astype({"rows": "Int64"}) if rows else pd.DataFrame(rows)


@st.cache_data(ttl=15)
def lake_times(minutes: int) -> pd.DataFrame:
    """(topic, ts) of every lake event in the last `minutes`: the `ts` column only."""
    s = settings()
    lake, cutoff = Lake.open(s), pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=minutes)
    frames = []
    for topic in EVENT_MODELS:
        ts = lake.read(topic, columns=["ts"], cache=s.lake_cache)["ts"]
        frames.append(pd.DataFrame({"topic": topic, "ts": ts[ts >= cutoff]}))
    return pd.concat(frames, ignore_index=True)


@st.cache_data(ttl=15)
def dead_letters() -> pd.DataFrame:
    """Dead letters with their source topic, time and reason (the error's first line)."""
    s = settings()
    dlq = Lake.open(s).read("events.dlq", columns=["ts", "source_topic", "error"],
                            cache=s.lake_cache)
    return dlq.assign(reason=dead_letter_reason(dlq["error"]))


def schedule_state() -> dict[str, Any] | None:
    """What the scheduler runs now and when the next runs are due; None when it has not
    written for a minute (not running: its `running` would be stale)."""
    try:
        state = settings().shared_store().get_json(Keys.schedule_state)
    except (RecoError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    return state if time.time() - float(state.get("updated", 0)) < 60 else None


def retrain_request() -> RetrainRequest | None:
    return pending_retrain(settings().shared_store())


def ago(ts: float) -> str:
    """A unix time as "N s/min/h ago" (UTC time in full past a day)."""
    seconds = time.time() - ts
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return pd.Timestamp(ts, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


@st.cache_data(ttl=5)
def schedule_runs(limit: int = 50) -> pd.DataFrame:
    """The scheduler's latest runs, newest first."""

    runs = settings().shared_store().log(Keys.schedule_runs).read()[-limit:][::-1]
    rows = []
    for r in runs:
        result = r.get("result") or {}
        rows.append({
            "kind": r["kind"], "outcome": r["outcome"],
            "start": pd.Timestamp(r["start"], unit="s", tz="UTC"),
            "seconds": round(r["end"] - r["start"], 1),
            "promoted": ", ".join(f"{v} {x['version']}" for v, x in result.items()
                                  if x["promoted"]),
            "refused": "; ".join(f"{v} {x['version']}: {', '.join(x['reasons'])}"
                                 for v, x in result.items() if not x["promoted"]),
            "note": r.get("error", "")})
    return pd.DataFrame(rows, columns=["kind", "outcome", "start", "seconds", "promoted",
                                       "refused", "note"])


QUARANTINE_COLUMNS = ["user_id", "status", "since", "source", "why", "actor"]


@st.cache_data(ttl=10)
def quarantine() -> pd.DataFrame:
    """The quarantine's entries, newest first: who, since when, and why (the operator's
    reason or the detectors that flagged them)."""
    try:
        entries = open_quarantine(settings()).read().entries
    except (RecoError, ValueError):
        return pd.DataFrame(columns=QUARANTINE_COLUMNS)
    rows = [{"user_id": u, "status": e.status, "since": e.since, "source": e.source,
             "why": e.why, "actor": e.actor} for u, e in entries.items()]
    frame = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
    return frame.sort_values("since", ascending=False, ignore_index=True)


def admin_post(route: str, body: dict[str, Any], token: str | None) -> tuple[int, Any]:
    """Call an admin route with a console session's token; (status, JSON body or text)."""
    if token is None:
        return 0, "sign in as an operator first"
    try:
        r = httpx.post(api_url() + route, json=body, timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return 0, f"API unreachable: {exc}"
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


# -- pure frame builders (snapshot -> DataFrame) ---------------------------------------------

def filter_audit(frame: pd.DataFrame, actors: list[str], actions: list[str],
                 text: str = "") -> pd.DataFrame:
    """The audit rows by any of `actors` and `actions` (empty: all) whose actor, action or
    detail contains `text` (case-insensitive)."""
    keep = pd.Series(True, index=frame.index)
    if actors:
        keep &= frame["actor"].isin(actors)
    if actions:
        keep &= frame["action"].isin(actions)
    if text:
        line = frame["actor"] + " " + frame["action"] + " " + frame["detail"]
        keep &= line.str.contains(text, case=False, regex=False)
    return frame[keep].reset_index(drop=True)


def fmt(value: float | None, spec: str = ".4f", missing: str = "-") -> str:
    """A figure for a metric tile; `missing` when the snapshot has none (not enough data)."""
    return missing if value is None else format(value, spec)


def interval_text(low: float | None, high: float | None, spec: str = ".2f") -> str:
    """"[low, high]", or "not available" without one (no ratio, no shown head item)."""
    if low is None or high is None:
        return "not available"
    return f"[{format(low, spec)}, {format(high, spec)}]"


def fairness_frame(snap: Snapshot) -> pd.DataFrame:
    rows = []
    for v, f in snap.fairness.items():
        figures = {"coverage": f.coverage, "gini": f.gini, "top10_share": f.top10_share,
                   "exposure_gini": f.exposure_gini, "diversity": f.diversity}
        rows += [{"variant": v, "metric": metric, "value": value}
                 for metric, value in figures.items() if value is not None]
    return pd.DataFrame(rows, columns=["variant", "metric", "value"])


def segment_frame(snap: Snapshot) -> pd.DataFrame:
    rows = [{"variant": v, "dimension": dim, "segment": seg, "diversity": val}
            for v, f in snap.fairness.items()
            for dim, segs in f.diversity_by_segment.items()
            for seg, val in segs.items()]
    return pd.DataFrame(rows, columns=["variant", "dimension", "segment", "diversity"])


ECHO_METRICS = ("gini", "top10_share", "exposure_gini", "homogenization")


def echo_frame(snap: Snapshot) -> pd.DataFrame:
    """Per variant, window and feedback-loop metric: the value and, for the rarefied
    concentration, its spread over the samples (`sd`; None where there is none)."""
    rows = []
    for v, e in snap.echo.variants.items():
        spread = {"gini": e.gini_sd, "top10_share": e.top10_sd}
        for metric in ECHO_METRICS:
            values, sds = getattr(e, metric), spread.get(metric, [])
            rows += [{"variant": v, "window": i, "metric": metric, "value": value,
                      "sd": sds[i] if i < len(sds) else None}
                     for i, value in enumerate(values) if value is not None]
    return pd.DataFrame(rows, columns=["variant", "window", "metric", "value", "sd"])


def tail_frame(snap: Snapshot) -> pd.DataFrame:
    rows = [{"variant": v, "group": group, "rate": getattr(t.rates, group),
             "exposure": getattr(t.exposure_share, group) if t.exposure_share else None}
            for v, t in snap.tail.items() for group in ("head", "mid", "tail")]
    return pd.DataFrame(rows, columns=["variant", "group", "rate", "exposure"])


def trend_text(t: Trend | None) -> tuple[str, str]:
    """A trend's tile value and its verdict: the slope, or "not enough data" and why."""
    if t is None or t.slope is None:
        return "not enough data", (t.reason if t and t.reason else "no trend")
    return f"{t.slope:+.4f}", "rising" if t.detected else "not rising"


def arms_frame(snap: Snapshot) -> pd.DataFrame:
    rows = []
    for v, a in snap.ab.arms.items():
        lo, hi = a.watch_through_ci
        rows.append({"variant": v, "users": a.users, "requests": a.requests,
                     "recommended": a.recommended_items, "watches": a.watches,
                     "watch_through": a.watch_through, "wt_low": lo, "wt_high": hi,
                     "ratings": a.ratings, "mean_rating": a.mean_rating})
    return pd.DataFrame(rows, columns=["variant", "users", "requests", "recommended",
                                       "watches", "watch_through", "wt_low", "wt_high",
                                       "ratings", "mean_rating"])


def sequential_frame(snap: Snapshot) -> pd.DataFrame:
    """The running-minimum always-valid p per look, per treatment (columns: look, arm,
    p_value)."""
    rows = [{"look": k + 1, "arm": t, "p_value": p}
            for t, c in snap.ab.comparisons.items() for k, p in enumerate(c.sequential.series)]
    return pd.DataFrame(rows, columns=["look", "arm", "p_value"])


def comparisons_frame(snap: Snapshot) -> pd.DataFrame:
    """One row per treatment against the control: lifts, p-values, Bayes, CUPED."""
    rows = []
    for t, c in snap.ab.comparisons.items():
        wt = c.watch_through_test
        rows.append({
            "arm": t, "lift": wt.relative, "lift_low": wt.relative_ci_low,
            "lift_high": wt.relative_ci_high, "fixed_p": wt.p_value,
            "always_valid_p": c.sequential.p_value, "holm_p": c.holm.get("watch-through"),
            "chance_to_win": c.bayes.chance_to_win, "risk": c.bayes.risk_b,
            "cuped_diff": c.cuped.diff, "cuped_variance_reduction": c.cuped.variance_reduction,
            "rating_diff": c.rating_test.diff, "rating_holm_p": c.holm.get("mean rating")})
    return pd.DataFrame(rows, columns=[
        "arm", "lift", "lift_low", "lift_high", "fixed_p", "always_valid_p", "holm_p",
        "chance_to_win", "risk", "cuped_diff", "cuped_variance_reduction", "rating_diff",
        "rating_holm_p"])


def epochs_frame(snap: Snapshot) -> pd.DataFrame:
    """One row per allocation epoch: weights, entrants per arm, SRM."""
    rows = [{"epoch": e.number, "start": e.start, "end": e.end or "in force",
             "weights": json.dumps(e.weights), "users": json.dumps(e.users),
             "srm_p": e.srm.p_value, "srm": "mismatch" if e.srm.mismatch else "ok"}
            for e in snap.ab.epochs]
    return pd.DataFrame(rows, columns=["epoch", "start", "end", "weights", "users", "srm_p",
                                       "srm"])


def guardrails_frame(snap: Snapshot) -> pd.DataFrame:
    rows = [{"arm": g.arm, "metric": g.metric, "value": g.value, "max": g.max, "min": g.min,
             "passed": g.passed} for g in snap.ab.guardrails]
    return pd.DataFrame(rows, columns=["arm", "metric", "value", "max", "min", "passed"])


def spam_users_frame(snap: Snapshot) -> pd.DataFrame:
    """The loudest raters of the window (columns: user_id, count, flagged, rdma, degsim,
    burst)."""
    rows = [{"user_id": u.user_id, "count": u.count, "flagged": u.combined, "rdma": u.rdma,
             "degsim": u.degsim, "burst": u.burst} for u in snap.spam.users]
    return pd.DataFrame(rows, columns=["user_id", "count", "flagged", "rdma", "degsim",
                                       "burst"])


def spam_distribution(snap: Snapshot) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The rating-count histogram (count, users), the combined flag's users (user_id,
    count) and the detector lines (rule, x) for `charts.rating_counts`."""
    sp = snap.spam
    hist = pd.DataFrame(sp.count_histogram, columns=["count", "users"])
    flagged = pd.DataFrame([{"user_id": u.user_id, "count": u.count} for u in sp.users
                            if u.combined], columns=["user_id", "count"])
    lines = pd.DataFrame([{"rule": name, "x": x} for name, x in
                          (("3-sigma", sp.three_sigma_line), ("robust z", sp.robust_line))
                          if x is not None], columns=["rule", "x"])
    return hist, flagged, lines


def detector_frame(snap: Snapshot) -> pd.DataFrame:
    """Users each spam detector flags (columns: detector, flagged)."""
    rows = [{"detector": name, "flagged": len(users)}
            for name, users in snap.spam.flagged.by_detector()]
    return pd.DataFrame(rows, columns=["detector", "flagged"])


def history_frame(history: list[Snapshot]) -> pd.DataFrame:
    """One row per snapshot and variant: the headline figures over time."""
    rows = [{"end": pd.Timestamp(snap.window.end), "variant": v, "coverage": f.coverage,
             "gini": f.gini, "top10_share": f.top10_share,
             "recommendations": snap.counts.recommendations,
             "p95_ms": (lat.p95 if (lat := snap.sla.latency_ms.get(v)) else None),
             "error_rate": snap.sla.error_rate,
             "spam_flagged": len(snap.spam.flagged.combined),
             **_psi_of(snap, v),
             **{f"{g}_exposure": (getattr(t.exposure_share, g) if (t := snap.tail.get(v))
                                  and t.exposure_share else None) for g in GROUPS}}
            for snap in history for v, f in snap.fairness.items()]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


HISTORY_COLUMNS = ["end", "variant", "coverage", "gini", "top10_share", "recommendations",
                   "p95_ms", "error_rate", "spam_flagged", "rating_psi", "popularity_psi",
                   "head_exposure", "mid_exposure", "tail_exposure"]
GROUPS = ("head", "mid", "tail")


def group_history(history: pd.DataFrame) -> pd.DataFrame:
    """Head / mid / tail exposure shares over the snapshots (columns: end, variant, group,
    share), snapshots without recommendations left out."""
    long = history.melt(id_vars=["end", "variant"], value_vars=[f"{g}_exposure" for g in GROUPS],
                        var_name="group", value_name="share").dropna(subset=["share"])
    return long.assign(group=long["group"].str.removesuffix("_exposure"))


PSI_BANDS = ((0.1, "stable"), (0.25, "moderate shift"))  # Yurdakul 2018; above: major shift


def psi_verdict(value: float | None) -> str:
    """A PSI's reading by the usual bands (see `ops.psi`), or "not enough data"."""
    if value is None:
        return "not enough data"
    return next((word for limit, word in PSI_BANDS if value < limit), "major shift")


def _psi_of(snap: Snapshot, variant: str) -> dict[str, float | None]:
    """The snapshot's two PSIs over all traffic ("all") or a variant's users."""
    d = snap.drift if variant == "all" else snap.drift.by_variant.get(variant)
    return {"rating_psi": d.rating_psi if d else None,
            "popularity_psi": d.popularity_psi if d else None}


def drift_frame(snap: Snapshot) -> pd.DataFrame:
    """Per variant: the window's events by its users and their PSIs against the training
    window, each with its reading (columns as in `DRIFT_COLUMNS`)."""
    rows = [{"variant": v, "ratings_now": d.ratings_now,
             "interactions_now": d.interactions_now,
             "rating_psi": d.rating_psi, "rating_reading": psi_verdict(d.rating_psi),
             "popularity_psi": d.popularity_psi,
             "popularity_reading": psi_verdict(d.popularity_psi)}
            for v, d in sorted(snap.drift.by_variant.items())]
    return pd.DataFrame(rows, columns=DRIFT_COLUMNS)


DRIFT_COLUMNS = ["variant", "ratings_now", "interactions_now", "rating_psi", "rating_reading",
                 "popularity_psi", "popularity_reading"]


def lorenz_frame(snap: Snapshot) -> pd.DataFrame:
    """Each variant's Lorenz curve of position-weighted exposure (columns: variant,
    items_share, exposure_share); a variant with no exposure has no rows."""
    rows = [{"variant": v, "items_share": i / (len(f.exposure_lorenz) - 1),
             "exposure_share": y}
            for v, f in snap.fairness.items() for i, y in enumerate(f.exposure_lorenz)]
    return pd.DataFrame(rows, columns=["variant", "items_share", "exposure_share"])


def rating_shift_frame(snap: Snapshot) -> pd.DataFrame:
    """The rating histogram's shares before the window and in it (columns: rating, period,
    share, ratings); a period with no ratings has no rows."""
    rows = []
    for period, hist in (("before the window", snap.drift.rating_hist_train),
                         ("in the window", snap.drift.rating_hist_now)):
        total = sum(hist)
        rows += [{"rating": r, "period": period, "share": n / total, "ratings": n}
                 for r, n in enumerate(hist, start=1) if total]
    return pd.DataFrame(rows, columns=["rating", "period", "share", "ratings"])


def sparkline(history: pd.DataFrame, variant: str, column: str) -> list[float] | None:
    """One variant's figure over the snapshots, oldest first, for a metric's sparkline;
    None with fewer than two known points (a line needs two)."""
    values = history[history["variant"] == variant].sort_values("end")[column].dropna()
    return [float(x) for x in values] if len(values) > 1 else None


def event_rates(times: pd.DataFrame, minutes: int) -> pd.DataFrame:
    """Events per second per topic in one-minute bins (or coarser for long ranges)."""
    if times.empty:
        return pd.DataFrame(columns=["minute", "topic", "per_second"])
    step = max(1, minutes // 120)
    binned = times.assign(minute=times["ts"].dt.floor(f"{step}min"))
    out = binned.groupby(["minute", "topic"]).size().rename("n").reset_index()
    return out.assign(per_second=out["n"] / (60 * step)).drop(columns="n")


def request_rate(prom: pd.DataFrame, previous: tuple[float, float] | None, now: float
                 ) -> tuple[float | None, tuple[float, float] | None]:
    """Requests/s between two scrapes of `reco_requests_total` (summed over routes and
    replicas); returns (rate or None on the first scrape, the state to keep)."""
    if prom.empty or "name" not in prom:
        return None, None
    total = float(prom.loc[prom["name"] == "reco_requests_total", "value"].sum())
    if previous is None or now <= previous[0] or total < previous[1]:
        return None, (now, total)
    return (total - previous[1]) / (now - previous[0]), (now, total)


def in_range(history: pd.DataFrame, minutes: int) -> pd.DataFrame:
    cutoff = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=minutes)
    return history[history["end"] >= cutoff] if not history.empty else history
