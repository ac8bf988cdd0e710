"""The retrain pipeline: lake -> interactions (spam quarantined) -> train A and B -> evaluate on the
temporal split -> forecast the feedback loop offline -> register signed candidates (the
forecast in their provenance) -> promote those that pass the gates.

Run with `ray job submit -- python -m jobs.retrain` or `reco train`. Runs once per call;
scheduling belongs to the platform. The lake is read with Ray Data when Ray is initialised.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import subprocess
import time
from functools import partial
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

from backend.core.errors import ConfigError
from backend.core.failpoints import failpoint
from backend.core.hashing import sha256_file
from backend.core.settings import Settings, TrainSettings, VariantSpec
from backend.ml.forecast import forecast_gini_slope
from backend.ml.recommenders import MODELS
from backend.ml.results import FeedbackForecast, OfflineMetrics
from backend.training.dataset import TrainingSet, evaluate_model, load_training_set
from backend.training.result import RetrainResult
from registry import Decision, Provenance, open_experiments, open_registry
from registry.manifest import LakeProvenance

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
LOCKFILE = ROOT / "requirements.lock"


def model_params(spec: VariantSpec, cfg: TrainSettings) -> dict[str, Any]:
    """The constructor keywords of a variant's model (recorded as the manifest's params):
    what TrainSettings gives its kind, then the variant's own `params` over them."""
    base: dict[str, Any] = {"watch_weight": cfg.watch_weight,
                            "rating_weight": cfg.rating_weight}
    if spec.model in ("item_knn", "diversity_knn"):
        base |= {"neighbours": cfg.neighbours, "shrinkage": cfg.shrinkage}
    if spec.model == "diversity_knn":
        base |= {"mmr_lambda": cfg.mmr_lambda, "exploration": cfg.exploration,
                 "tail_slots": cfg.tail_slots, "tail_share": cfg.tail_share}
    unknown = set(spec.params) - accepted(MODELS[spec.model])
    if unknown:
        raise ConfigError(f"{spec.model} takes no {sorted(unknown)} (RECO_VARIANTS params)")
    return base | spec.params


def accepted(cls: type) -> set[str]:
    """The keyword arguments a model class names, over its constructors up the MRO (each
    passes the rest on with **params)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names |= {p.name for p in inspect.signature(vars(klass)["__init__"]).parameters.values()
                      if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}
    return names - {"self"}


def gate(candidate: OfflineMetrics, production: OfflineMetrics | None, cfg: TrainSettings,
         forecast: FeedbackForecast | None = None) -> list[str]:
    """Reasons to refuse promotion; empty means promote."""
    reasons = []
    if forecast is not None and forecast.exceeds:
        reasons.append(f"forecast Gini slope {forecast.slope:+.4f}/cycle (95% CI "
                       f"[{forecast.ci_low:+.4f}, {forecast.ci_high:+.4f}]) lies above the "
                       f"echo-chamber limit {forecast.limit}")
    if production is not None and candidate.ndcg < production.ndcg - cfg.ndcg_tolerance:
        reasons.append(f"NDCG@{cfg.k} {candidate.ndcg:.4f} is more than "
                       f"{cfg.ndcg_tolerance} below production's {production.ndcg:.4f}")
    if candidate.coverage < cfg.min_coverage:
        reasons.append(f"coverage {candidate.coverage:.3f} < {cfg.min_coverage}")
    if candidate.gini > cfg.max_gini:
        reasons.append(f"Gini {candidate.gini:.3f} > {cfg.max_gini}")
    return reasons


def provenance(data: TrainingSet) -> Provenance:
    """Code, data and libraries a version is trained from (per-variant fields left unset)."""
    lake, inter = data.lake, data.interactions
    files, max_offsets = [], {}
    for topic, version in data.versions.items():
        files += [f.removeprefix(lake.root.removeprefix("s3://")).lstrip("/")
                  for f in lake.files(topic, version=version)]
        frame = lake.read_table(topic, ["kafka_partition", "kafka_offset"],
                                version=version).to_pandas()
        max_offsets[topic] = {str(p): int(o) for p, o in
                              frame.groupby("kafka_partition")["kafka_offset"].max().items()}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    return Provenance(
        git_sha=sha,
        training_window=(str(inter["ts"].min()), str(inter["ts"].max())),
        rows=len(inter), users=int(inter["user_id"].nunique()),
        quarantined_users=len(data.quarantine),
        lake=LakeProvenance(
            files=len(files),
            files_sha256=hashlib.sha256("\n".join(sorted(files)).encode()).hexdigest(),
            max_offsets=max_offsets, versions=dict(data.versions), uri=lake.root),
        libraries={p: pkg_version(p) for p in
                   ("numpy", "scipy", "pandas", "pyarrow", "implicit", "ray")},
        lockfile_sha256=sha256_file(LOCKFILE) if LOCKFILE.exists() else None,
    )


def retrain(settings: Settings) -> RetrainResult:
    """Train, evaluate, forecast, register, gate and promote each settings variant once."""
    cfg = settings.train
    data = load_training_set(settings)
    prov = provenance(data)
    registry = open_registry(settings, signer=True)
    running = open_experiments(settings).running()
    pinned = {a.variant: a.version for a in running.spec.arms if a.version} if running else {}
    out = {}
    for variant, spec in settings.variants.items():
        cls = MODELS[spec.model]
        params = model_params(spec, cfg)
        t0 = time.perf_counter()
        metrics = evaluate_model(cls(**params), data, cfg)
        final = cls(**params).fit(data.interactions, data.items, data.users)
        fit_s = time.perf_counter() - t0
        forecast = None
        if cfg.forecast_steps:
            forecast = forecast_gini_slope(
                partial(cls, **params), data.interactions, data.items, data.users,
                data.history, settings.sim, cfg.forecast_steps, cfg.forecast_visits, cfg.k,
                settings.analytics.echo_slope_max, cfg.forecast_rows)
        version = registry.register(variant, final, prov.model_copy(update={
            "train_seconds": round(fit_s, 3), "feedback_forecast": forecast}), metrics)
        try:
            production = registry.verify(variant, "production").metrics
        except Exception:  # no production yet, or it no longer verifies: gate on limits only
            production = None
        reasons = gate(metrics, production, cfg, forecast)
        if variant in pinned and running is not None:
            reasons.append(f"experiment {running.spec.id} pins {variant} at {pinned[variant]}")
        failpoint("retrain.before_promote")
        if not reasons:
            registry.promote(variant, version)
            audit_promotion(settings, variant, version)
        decision = Decision(version=version, promoted=not reasons, reasons=reasons,
                            metrics=metrics, forecast=forecast)
        registry.record_decision(variant, decision)
        log.info("trained variant=%s version=%s promoted=%s ndcg=%.4f coverage=%.3f gini=%.3f"
                 " reasons=%s", variant, version, not reasons, metrics.ndcg,
                 metrics.coverage, metrics.gini, reasons)
        out[variant] = decision
    return RetrainResult(out)


def audit_promotion(settings: Settings, variant: str, version: str) -> None:
    """The gate's promotion in the operators' audit trail, as `job:retrain` (the decision
    itself is in the registry's decisions log); a failed write is logged, not raised: the
    version is production already."""
    try:
        open_experiments(settings).record("promote", "job:retrain",
                                          {"variant": variant, "version": version})
    except Exception:
        log.exception("audit write failed action=promote actor=job:retrain variant=%s",
                      variant)
