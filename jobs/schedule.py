"""Scheduler job: the loop of `backend.scheduling.scheduler` in a Ray actor that holds the
analytics gauges (Ray exports an actor's metrics).

Run with `ray job submit -- python -m jobs.schedule` (`reco up` does).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from backend.analytics.cycle import GAUGE_NAMES
from backend.core.logs import setup_logging
from backend.core.memory import ONE_ARENA
from backend.core.runtime import init_ray, job_env
from backend.core.settings import Settings
from backend.scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)


def _actor_class() -> Any:
    import ray

    @ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0.1)
    class SchedulerActor:
        """Holds the gauges (Ray exports an actor's metrics) and runs the loop."""

        def __init__(self, settings: Settings, dashboard_url: str) -> None:
            from ray.job_submission import JobSubmissionClient
            from ray.util.metrics import Gauge

            setup_logging()
            gauges = {n: Gauge(f"reco_analytics_{n}", description=n, tag_keys=("variant",))
                      for n in GAUGE_NAMES}
            url = dashboard_url if "://" in dashboard_url else f"http://{dashboard_url}"
            self.scheduler = Scheduler(settings, JobSubmissionClient(url), gauges)

        def run(self, tick: float) -> None:
            while True:
                try:
                    self.scheduler.step(time.time())
                except Exception:  # one bad step must not end the schedule
                    log.exception("scheduler step failed")
                time.sleep(tick)

    return SchedulerActor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tick", type=float, default=2.0, help="seconds between checks")
    args = parser.parse_args(argv)
    setup_logging()
    settings = Settings()
    import ray

    dashboard_url = init_ray(settings).dashboard_url  # the Jobs API of the cluster we run on
    # its analytics cycle runs in a thread: one malloc arena lets it reuse the heap
    env = job_env(settings) | ONE_ARENA
    actor = _actor_class().options(runtime_env={"env_vars": env}).remote(settings,
                                                                          dashboard_url)
    ray.get(actor.run.remote(args.tick))


if __name__ == "__main__":
    main()
