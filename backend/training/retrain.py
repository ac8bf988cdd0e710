"""The retrain pipeline: lake -> interactions (spam quarantined) -> train A and B -> evaluate on the
temporal split -> forecast the feedback loop offline -> register signed candidates (the
forecast in their provenance) -> promote those that pass the gates.

Run with `ray job submit -- python -m jobs.retrain` or `reco train`. Runs once per call;
scheduling belongs to the platform. The lake is read with Ray Data when Ray is initialised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import pandas as pd

from backend.core.failpoints import failpoint
from backend.core.hashing import sha256_file
from backend.core.settings import Settings, TrainSettings
from backend.data.catalog import load_catalog
from backend.data.lake import Lake
from backend.data.movielens import load as load_movielens
from backend.ml.evaluation import build_interactions, evaluate, temporal_split
from backend.ml.forecast import forecast_gini_slope
from backend.ml.recommenders import DiversityKNN, ItemKNN, Recommender
from registry import open_registry

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
LOCKFILE = ROOT / "requirements.lock"
VARIANTS: dict[str, type[Recommender]] = {"A": ItemKNN, "B": DiversityKNN}


def model_params(variant: str, cfg: TrainSettings) -> dict[str, Any]:
    base = {"neighbours": cfg.neighbours, "shrinkage": cfg.shrinkage,
            "watch_weight": cfg.watch_weight, "rating_weight": cfg.rating_weight}
    if variant == "B":
        base |= {"mmr_lambda": cfg.mmr_lambda, "exploration": cfg.exploration,
                 "tail_slots": cfg.tail_slots, "tail_share": cfg.tail_share}
    return base


def read_events(lake: Lake, topic: str, columns: list[str]) -> pd.DataFrame:
    import ray

    files = lake.files(topic)
    if ray.is_initialized() and files:
        return ray.data.read_parquet([str(f) for f in files], columns=columns).to_pandas()
    return lake.read(topic, columns=columns)


def quarantined(settings: Settings) -> set[int]:
    """Users the analytics side flagged as spam (`var/analytics/quarantine.json`)."""
    path = settings.layout.quarantine
    return set(json.loads(path.read_text()).get("users", [])) if path.exists() else set()


def gate(candidate: dict[str, float], production: dict[str, float] | None,
         cfg: TrainSettings, forecast: dict | None = None) -> list[str]:
    """Reasons to refuse promotion; empty means promote."""
    reasons = []
    if forecast and forecast["exceeds"]:
        reasons.append(f"forecast Gini slope {forecast['slope']:+.4f}/cycle exceeds the "
                       f"echo-chamber limit {forecast['limit']}")
    if production and candidate["ndcg"] < production["ndcg"] - cfg.ndcg_tolerance:
        reasons.append(f"NDCG@{cfg.k} {candidate['ndcg']:.4f} is more than "
                       f"{cfg.ndcg_tolerance} below production's {production['ndcg']:.4f}")
    if candidate["coverage"] < cfg.min_coverage:
        reasons.append(f"coverage {candidate['coverage']:.3f} < {cfg.min_coverage}")
    if candidate["gini"] > cfg.max_gini:
        reasons.append(f"Gini {candidate['gini']:.3f} > {cfg.max_gini}")
    return reasons


def provenance(settings: Settings, lake: Lake, inter: pd.DataFrame,
               quarantine: set[int]) -> dict[str, Any]:
    files, max_offsets = [], {}
    for topic in ("events.rating", "events.watch"):
        for f in lake.files(topic):
            files.append(f"{f.relative_to(lake.root)}:{sha256_file(f)}")
        frame = lake.read(topic, columns=["kafka_partition", "kafka_offset"])
        max_offsets[topic] = {str(p): int(o) for p, o in
                              frame.groupby("kafka_partition")["kafka_offset"].max().items()}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    return {
        "git_sha": sha,
        "training_window": [str(inter["ts"].min()), str(inter["ts"].max())],
        "rows": len(inter), "users": int(inter["user_id"].nunique()),
        "quarantined_users": len(quarantine),
        "lake": {"files": len(files),
                 "files_sha256": hashlib.sha256("\n".join(sorted(files)).encode()).hexdigest(),
                 "max_offsets": max_offsets},
        "libraries": {p: pkg_version(p) for p in
                      ("numpy", "scipy", "pandas", "pyarrow", "implicit", "ray")},
        "lockfile_sha256": sha256_file(LOCKFILE) if LOCKFILE.exists() else None,
    }


def retrain(settings: Settings) -> dict[str, dict[str, Any]]:
    cfg = settings.train
    lake = Lake(settings.lake_root)
    quarantine = quarantined(settings)
    inter = build_interactions(
        read_events(lake, "events.rating", ["user_id", "item_id", "rating", "ts"]),
        read_events(lake, "events.watch", ["user_id", "item_id", "ts"]), quarantine)
    if inter.empty:
        raise RuntimeError("the lake holds no ratings or watches yet: nothing to train on")
    ml = load_movielens(settings.data_cache)
    items = load_catalog(settings)  # MovieLens plus released items: cold start by content
    train, test = temporal_split(inter, cfg.test_fraction)
    prov = provenance(settings, lake, inter, quarantine)
    registry = open_registry(settings, signer=True)
    out = {}
    for variant, cls in VARIANTS.items():
        params = model_params(variant, cfg)
        t0 = time.perf_counter()
        metrics = evaluate(cls(**params).fit(train, items, ml.users), train, test, cfg.k,
                           cfg.tail_share)
        final = cls(**params).fit(inter, items, ml.users)
        fit_s = time.perf_counter() - t0
        forecast = None
        if cfg.forecast_steps:
            forecast = forecast_gini_slope(
                lambda cls=cls, params=params: cls(**params), inter, items, ml.users,
                ml.ratings, settings.sim, cfg.forecast_steps, cfg.forecast_visits, cfg.k,
                settings.analytics.echo_slope_max)
        version = registry.register(variant, final, prov | {
            "train_seconds": round(fit_s, 3), "feedback_forecast": forecast}, metrics)
        try:
            production = registry.verify(variant, "production")["metrics"]
        except Exception:  # no production yet, or it no longer verifies: gate on limits only
            production = None
        reasons = gate(metrics, production, cfg, forecast)
        failpoint("retrain.before_promote")
        if not reasons:
            registry.promote(variant, version)
        registry.record_decision(variant, {"version": version, "promoted": not reasons,
                                           "reasons": reasons, "metrics": metrics,
                                           "forecast": forecast})
        log.info("trained variant=%s version=%s promoted=%s ndcg=%.4f coverage=%.3f gini=%.3f"
                 " reasons=%s", variant, version, not reasons, metrics["ndcg"],
                 metrics["coverage"], metrics["gini"], reasons)
        out[variant] = {"version": version, "promoted": not reasons, "reasons": reasons,
                        "metrics": metrics, "forecast": forecast}
    return out
