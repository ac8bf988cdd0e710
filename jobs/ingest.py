"""Ingest job: one Ray actor per partition, all in one consumer group, Kafka -> event lake.

Run with `ray job submit -- python -m jobs.ingest` or `reco ingest [--once]`. Actors restart
after a crash (max_restarts=-1) and their run call is retried, resuming from the committed
offsets; the lake dedupe makes the replayed batch a no-op. Counts are exported as Prometheus
metrics through Ray's metrics agent (`reco_ingest_*`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from typing import Any

import ray

from backend.core.logs import setup_logging
from backend.core.runtime import init_ray, job_env
from backend.core.settings import Settings
from backend.data.ingest import IngestStats, PartitionWorker

log = logging.getLogger(__name__)


class _Metrics:
    """Ray metrics (exported in Prometheus format by the node's metrics agent)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        keys = ("topic",)
        self.counters = {
            name: Counter(f"reco_ingest_{name}_total", description=f"events {name}", tag_keys=keys)
            for name in ("consumed", "valid", "invalid", "deduplicated", "written")
        }
        self.latency = Histogram("reco_ingest_batch_seconds", description="batch latency",
                                 boundaries=[0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5])

    def observe(self, delta: IngestStats) -> None:
        for name, counter in self.counters.items():
            for topic, n in getattr(delta, name).items():
                if n:
                    counter.inc(n, tags={"topic": topic})
        self.latency.observe(delta.batch_seconds)


class IngestActor:
    """One partition worker as a Ray actor (options in `start`: restarted when it dies)."""

    def __init__(self, settings: Settings, worker_id: int, members: int | None = None) -> None:
        setup_logging()
        # below the API's replicas: ingest tolerates seconds of delay (it pauses anyway),
        # a recommendation does not
        os.nice(max(0, settings.ingest.niceness - os.nice(0)))
        self.worker = PartitionWorker(settings, worker_id, members)
        metrics = _Metrics()
        self.worker.logic.on_batch = metrics.observe
        self._stop = threading.Event()

    def run(self) -> dict:
        return self.worker.run(stop=self._stop.is_set)

    def stop(self) -> None:
        self._stop.set()

    def progress(self) -> dict:
        return self.worker.progress()


def start(settings: Settings, actors: int | None = None, drain: bool = False
          ) -> tuple[list, list]:
    """Create the actors and start their loops; returns (actor handles, run refs). A drain's
    actors each take a fixed share of the partitions instead of joining the group."""
    n = actors or settings.ingest.actors or settings.kafka.partitions
    actor = ray.remote(IngestActor).options(
        max_restarts=-1, max_task_retries=-1, num_cpus=0.25, max_concurrency=2,
        scheduling_strategy="SPREAD",  # over the cluster's nodes: one node lost, not all
        runtime_env={"env_vars": job_env(settings)})
    workers: list[Any] = [actor.remote(settings, i, n if drain else None)  # Ray actor handles
                          for i in range(n)]
    log.info("ingest started actors=%d store=%s", n, settings.store.uri)
    return workers, [w.run.remote() for w in workers]


def drained(progress: list[dict], idle_seconds: float) -> bool:
    """True when the live members together hold every partition, none is failing, and each
    has polled without getting a record for `idle_seconds` since its last assignment.

    Decided by all members, not by one: a member restarting after a crash holds nothing
    until it has its share again, and the embedded broker's high-watermark cannot say where
    a partition ends."""
    known = set().union(*(p["known"] for p in progress))
    held = set().union(*(p["assigned"] for p in progress))
    return (bool(known) and known <= held and not any(p["failing"] for p in progress)
            and all(p["idle"] >= idle_seconds for p in progress))


def wait_drained(settings: Settings, workers: list, poll: float = 0.5) -> None:
    """Block until `drained`; an actor that is restarting makes the check wait. Says every
    ten seconds what it waits for."""
    said = time.monotonic()
    while True:
        try:
            progress = ray.get([w.progress.remote() for w in workers], timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            progress = None
        if progress and drained(progress, settings.ingest.idle_seconds):
            return
        if time.monotonic() - said > 10:
            said = time.monotonic()
            log.info("waiting for the drain progress=%s", json.dumps(progress))
        time.sleep(poll)


def stop(workers: list, refs: list) -> list[dict]:
    """Stop the loops, wait for their stats, then kill the actors for good."""
    try:
        for w in workers:
            w.stop.remote()
        return ray.get(refs)
    finally:
        for w in workers:
            ray.kill(w, no_restart=True)


def run(settings: Settings, once: bool = False, actors: int | None = None) -> list[dict]:
    """Run the job until done (forever unless `once`); returns each actor's stats."""
    workers, refs = start(settings, actors, drain=once)
    try:
        if once:
            wait_drained(settings, workers)
        else:
            ray.get(refs)
    finally:
        stats = stop(workers, refs)
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop when the topics are drained")
    parser.add_argument("--actors", type=int, default=None)
    parser.add_argument("--course-topic", default=None,
                        help="also read this external topic of course-format lines")
    args = parser.parse_args(argv)
    setup_logging()
    settings = Settings()
    if args.course_topic:
        settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(
            update={"course_topic": args.course_topic})})
    init_ray(settings)
    stats = run(settings, once=args.once, actors=args.actors)
    log.info("ingest finished stats=%s", json.dumps(stats))


if __name__ == "__main__":
    main()
