"""The scheduler: submits the retrain job every `schedule.retrain_interval` through the Ray
Jobs SDK and runs the analytics cycle every `schedule.analyze_interval`, one of each at a time.

The analytics cycle runs in this job's actor, in a thread at the lowest CPU priority, not as a
Ray job of its own: a job per minute costs a JobSupervisor actor (at the workers' niceness 0)
and a fresh interpreter importing pandas, about 3.7 s of CPU, and on two cores that burst
pushed the API's p99 under a 50 req/s soak from 58 ms to 0.6 s (bench/soak.py).
`python -m jobs.analyze` still runs the same cycle as a job or by hand.

Run with `ray job submit -- python -m jobs.schedule` (`reco up` does). Every finished run is
appended to the shared store's `schedule/runs` log (kind, submission id, start, end, outcome,
and for retrains the result per variant and the production versions afterwards);
`schedule/state.json` holds
what runs now and when the next runs are due, for `reco status` and the dashboard. After each
analytics run the headline figures are exported as Prometheus gauges (`ray_reco_analytics_*`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend.analytics.cycle import cycle, gauge_values
from backend.analytics.snapshot import Snapshot
from backend.core.layout import Keys
from backend.core.requests import answered_retrain, pending_retrain
from backend.core.runtime import job_env
from backend.core.settings import Settings
from backend.core.store import StoreError
from backend.training.result import RetrainResult
from registry import open_registry

log = logging.getLogger(__name__)
KINDS = ("retrain", "analyze")
JOBS = {"retrain": "jobs.retrain"}  # kinds submitted as Ray jobs; the others run in-process
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class SchedulerLogic:
    """When to submit what; the clock and the job states come in, decisions go out."""

    intervals: dict[str, float]
    started: float
    last: dict[str, float] = field(default_factory=dict)  # kind -> start of its latest run
    running: dict[str, tuple[str, float]] = field(default_factory=dict)  # kind -> (id, start)

    @classmethod
    def resume(cls, intervals: dict[str, float], runs: list[dict], now: float
               ) -> SchedulerLogic:
        """Carry on from the recorded runs: a restart does not retrain early."""
        last: dict[str, float] = {}
        for run in runs:
            last[run["kind"]] = max(last.get(run["kind"], 0.0), float(run["start"]))
        return cls(intervals, now, last)

    def next_due(self, kind: str) -> float:
        return self.last.get(kind, self.started) + self.intervals[kind]

    def due(self, now: float, requested: float | None = None) -> list[str]:
        """Kinds to submit now: due, or a retrain `requested` after the latest started, and
        not running (never two of a kind at once: a request during a retrain waits for it)."""
        asked = requested is not None and requested > self.last.get("retrain", -1.0)
        return [k for k in KINDS if k not in self.running
                and (now >= self.next_due(k) or (k == "retrain" and asked))]

    def submitted(self, kind: str, job_id: str, now: float) -> None:
        self.running[kind] = (job_id, now)
        self.last[kind] = now

    def record(self, kind: str, status: str, now: float) -> dict[str, Any]:
        """The running `kind`'s run record, ended `now` with `status` (still running until
        `finished`: the record is kept first)."""
        job_id, start = self.running[kind]
        return {"kind": kind, "id": job_id, "start": start, "end": now, "outcome": status}

    def finished(self, kind: str) -> None:
        self.running.pop(kind)


class Scheduler:
    """The loop around `SchedulerLogic`: submits through the Jobs SDK, records, exports."""

    def __init__(self, settings: Settings, client: Any, gauges: Any = None,
                 analyze: Callable[[], object] | None = None) -> None:
        self.settings, self.client, self.gauges = settings, client, gauges
        self.analyze = analyze or (lambda: _analytics_cycle(settings))
        self._local: dict[str, tuple[threading.Thread, list[str]]] = {}  # id -> (thread, outcome)
        self.store = settings.shared_store()
        self.runs = self.store.log(Keys.schedule_runs)
        cfg = settings.schedule
        self.logic = SchedulerLogic.resume(
            {"retrain": cfg.retrain_interval, "analyze": cfg.analyze_interval},
            self.runs.read(), time.time())
        self._adopt_running()

    def _adopt_running(self) -> None:
        """A restarted scheduler waits for the jobs its predecessor left running."""
        for job in self.client.list_jobs():
            sid = job.submission_id or ""
            status = getattr(job.status, "value", str(job.status))
            for kind in JOBS:
                if sid.startswith(f"reco-{kind}-") and status not in TERMINAL:
                    self.logic.submitted(kind, sid, float(job.start_time or 0) / 1000
                                         or time.time())

    def submit(self, kind: str, now: float) -> str:
        job_id = f"reco-{kind}-{int(now * 1000)}"
        if kind not in JOBS:
            outcome: list[str] = []
            thread = threading.Thread(target=self._run_local, args=(kind, outcome),
                                      name=job_id, daemon=True)
            self._local[job_id] = (thread, outcome)
            thread.start()
            self.logic.submitted(kind, job_id, now)
            log.info("started kind=%s id=%s", kind, job_id)
            return job_id
        # batch work at the lowest CPU priority: the API's replicas run at niceness 0
        entry = f"nice -n 19 {sys.executable} -m {JOBS[kind]}"
        if kind == "retrain":
            entry += f" --result {Keys.retrain_result(job_id)}"
        self.client.submit_job(entrypoint=entry, submission_id=job_id,
                               runtime_env={"env_vars": job_env(self.settings)})
        self.logic.submitted(kind, job_id, now)
        log.info("submitted kind=%s id=%s", kind, job_id)
        return job_id

    def _run_local(self, kind: str, outcome: list[str]) -> None:
        """An in-process run, in its own thread at niceness 19 (Linux: per thread)."""
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            self.analyze()
            outcome.append("SUCCEEDED")
        except Exception:
            log.exception("run failed kind=%s", kind)
            outcome.append("FAILED")

    def _status(self, job_id: str) -> str:
        if job_id in self._local:
            thread, outcome = self._local[job_id]
            if thread.is_alive():
                return "RUNNING"
            return outcome[0] if outcome else "FAILED"  # forgotten once recorded (poll)
        return getattr(s := self.client.get_job_status(job_id), "value", str(s))

    def poll(self, now: float) -> list[dict]:
        """Record the runs that ended since the last poll; stop a retrain that overran."""
        done = []
        for kind, (job_id, start) in list(self.logic.running.items()):
            status = self._status(job_id)
            overran = (kind == "retrain" and status not in TERMINAL
                       and now - start > self.settings.schedule.retrain_timeout)
            if overran:
                self.client.stop_job(job_id)
                status = "TIMEOUT"
            elif status not in TERMINAL:
                continue
            try:
                record = self._record(kind, job_id, status, now)
            except (StoreError, OSError):  # the store away: the run is recorded next poll
                log.exception("run record not written kind=%s id=%s", kind, job_id)
                continue
            self.logic.finished(kind)
            self._local.pop(job_id, None)
            log.info("finished kind=%s id=%s outcome=%s", kind, job_id, status)
            done.append(record)
        return done

    def _record(self, kind: str, job_id: str, status: str, now: float) -> dict[str, Any]:
        """Write the ended run's record. What it reads besides (the retrain's result, the
        snapshot for the gauges) failing for good is written as the record's error; the
        store failing raises, and the run stays running until it is back."""
        record = self.logic.record(kind, status, now)
        try:
            if kind == "retrain":
                record |= self._retrain_outcome(job_id)
            elif status == "SUCCEEDED":
                self._export_gauges()
        except (StoreError, OSError):
            raise
        except Exception as exc:  # a record with the error, not a run stuck for good
            log.exception("run outcome unreadable kind=%s id=%s", kind, job_id)
            record["error"] = f"the run's outcome could not be read: {exc}"
        self.runs.append(record)
        return record

    def _retrain_outcome(self, job_id: str) -> dict[str, Any]:
        data = self.store.get(Keys.retrain_result(job_id))
        result = (RetrainResult.model_validate(json.loads(data))
                  if data is not None else None)  # json.loads: NaN metrics as the job wrote
        registry = open_registry(self.settings)
        out: dict[str, Any] = {"production": {v: registry.aliases(v).production
                                              for v in registry.variants()}}
        if result is None:
            out["error"] = "the retrain job ended without a result; production is unchanged"
            return out
        out["result"] = {v: {"version": r.version, "promoted": r.promoted, "reasons": r.reasons,
                             "forecast_slope": None if r.forecast is None else r.forecast.slope}
                         for v, r in result.items()}
        return out

    def _export_gauges(self) -> None:
        if self.gauges is None:
            return

        data = self.store.get(Keys.latest_snapshot)
        if data is not None:
            for g in gauge_values(Snapshot.model_validate_json(data)):
                self.gauges[g.name].set(g.value, tags=g.tags)

    def write_state(self, now: float) -> None:
        self.store.put_json(Keys.schedule_state, {
            "updated": now,
            "running": {k: {"id": i, "start": s} for k, (i, s) in self.logic.running.items()},
            "next_due": {k: self.logic.next_due(k) for k in KINDS},
            "intervals": self.logic.intervals})

    def step(self, now: float) -> None:
        self.poll(now)
        request = pending_retrain(self.store)
        for kind in self.logic.due(now, request.requested if request else None):
            try:
                self.submit(kind, now)
            except Exception:  # the Jobs API may be briefly away; the next step retries
                log.exception("submit failed kind=%s", kind)
        if request is not None and self.logic.last.get("retrain", -1.0) >= request.requested:
            log.info("retrain request answered actor=%s", request.actor)  # a retrain since
            answered_retrain(self.store, request)
        self.write_state(now)


def _analytics_cycle(settings: Settings) -> None:
    import pyarrow as pa


    cycle(settings)
    pa.default_memory_pool().release_unused()  # a long-lived process: hand back the frames
