"""Start, stop and inspect the platform on one machine (`reco up|down|status`).

Parts so far: the embedded broker (unless a Kafka cluster is configured), a Ray head with
token auth and its dashboard (so `ray job submit` works), the ingest job submitted through the
Ray Jobs SDK, the MovieLens bootstrap when the lake is empty and the first signed models when
the registry has none in production. State stays under `var/`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from backend.broker import EmbeddedBroker
from backend.kafka import ensure_topics
from backend.lake import Lake
from backend.raycluster import RayHead, job_env
from backend.settings import Settings

log = logging.getLogger(__name__)
INGEST_JOB_PREFIX = "reco-ingest"
_ACTIVE = {"PENDING", "RUNNING"}


def running_ingest_job(head: RayHead) -> str | None:
    for job in head.job_client().list_jobs():
        status = getattr(job.status, "value", str(job.status))
        if (job.submission_id or "").startswith(INGEST_JOB_PREFIX) and status in _ACTIVE:
            return job.submission_id
    return None


def submit_ingest(settings: Settings, head: RayHead) -> tuple[str, bool]:
    """Submit the ingest job unless one runs; returns (submission id, newly submitted)."""
    existing = running_ingest_job(head)
    if existing:
        return existing, False
    job = head.job_client().submit_job(
        entrypoint=f"{sys.executable} -m jobs.ingest",
        submission_id=f"{INGEST_JOB_PREFIX}-{int(time.time())}",
        runtime_env={"env_vars": job_env(settings)},
    )
    return job, True


def up(settings: Settings, echo: Callable[[str], object] = log.info) -> None:
    if settings.kafka.embedded:
        broker = EmbeddedBroker(settings.kafka, settings.run_dir)
        was = broker.pid()
        pid = broker.start()
        echo(f"broker: {'already running' if was else 'started'} pid={pid} {broker.address}")
    created = ensure_topics(settings.kafka)
    echo(f"topics: created {created}" if created else "topics: present")
    head = RayHead(settings)
    echo(f"ray: {'started' if head.start() else 'already running'} {head.dashboard_url}")
    job, new = submit_ingest(settings, head)
    echo(f"ingest job: {'submitted' if new else 'already running'} {job}")
    lake = Lake(settings.lake_root)
    if lake.count("events.rating") == 0:
        from jobs.bootstrap import publish, wait_landed

        echo("bootstrap: publishing MovieLens-100K history (first start only)")
        missing = wait_landed(lake, publish(settings), timeout=600)
        echo(f"bootstrap: missing from the lake {missing}")
    for topic, st in lake.stats().items():
        echo(f"lake {topic}: rows={st['rows']} newest={st['newest_ts']}")
    from registry import open_registry

    registry = open_registry(settings)
    if not all(registry.aliases(v).get("production") for v in ("A", "B")):
        from jobs.retrain import retrain

        echo("models: training the first signed versions")
        for variant, r in retrain(settings).items():
            echo(f"models: {variant} {r['version']} promoted={r['promoted']} {r['reasons']}")
    for variant in registry.variants():
        echo(f"models: {variant} production={registry.aliases(variant).get('production')}")
    echo(f"ready: kafka={settings.kafka.servers} ray_dashboard={head.dashboard_url} "
         f"metrics=http://127.0.0.1:{settings.ray.metrics_export_port}/metrics")


def down(settings: Settings, echo: Callable[[str], object] = log.info) -> None:
    head = RayHead(settings)
    if head.running():
        job = running_ingest_job(head)
        if job:
            head.job_client().stop_job(job)
            echo(f"ingest job: stopped {job}")
    echo("ray: stopped" if head.stop() else "ray: was not running (or not ours)")
    if settings.kafka.embedded:
        stopped = EmbeddedBroker(settings.kafka, settings.run_dir).stop()
        echo("broker: stopped" if stopped else "broker: was not running")


def status(settings: Settings) -> dict[str, object]:
    head = RayHead(settings)
    out: dict[str, object] = {
        "broker": EmbeddedBroker(settings.kafka, settings.run_dir).status()
        if settings.kafka.embedded else {"external": settings.kafka.servers},
        "ray": {"running": head.running(), "dashboard": head.dashboard_url},
        "ingest_job": running_ingest_job(head) if head.running() else None,
        "lake": {t: st["rows"] for t, st in Lake(settings.lake_root).stats().items()},
        "models": _production_models(settings),
    }
    return out


def _production_models(settings: Settings) -> dict[str, str | None]:
    from registry import open_registry

    registry = open_registry(settings)
    return {v: registry.aliases(v).get("production") for v in registry.variants()}
