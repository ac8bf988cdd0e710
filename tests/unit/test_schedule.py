"""Scheduler decisions and records, with a fake Jobs API (the real one: integration test)."""

from __future__ import annotations

import json
import os
import threading
import time
from types import SimpleNamespace

from backend.core.layout import Keys
from backend.scheduling.scheduler import Scheduler, SchedulerLogic


def test_due_and_never_two_of_a_kind():
    logic = SchedulerLogic({"retrain": 100, "analyze": 10}, started=0.0)
    assert logic.due(5) == []
    assert logic.due(10) == ["analyze"]
    logic.submitted("analyze", "a1", 10)
    assert logic.due(100) == ["retrain"]  # analyze still running: not again
    logic.submitted("retrain", "r1", 100)
    assert logic.due(500) == []  # both running, however late
    rec = logic.record("retrain", "FAILED", 520)
    assert rec == {"kind": "retrain", "id": "r1", "start": 100, "end": 520, "outcome": "FAILED"}
    assert logic.due(520) == []  # recorded, not yet finished
    logic.finished("retrain")
    assert logic.due(520) == ["retrain"]


def test_resume_keeps_the_interval_across_restarts():
    runs = [{"kind": "retrain", "start": 1000.0}, {"kind": "retrain", "start": 900.0}]
    logic = SchedulerLogic.resume({"retrain": 3600, "analyze": 60}, runs, now=1500.0)
    assert logic.next_due("retrain") == 4600 and logic.next_due("analyze") == 1560


def join_run(run_id: str) -> None:
    """Wait for an in-process run (its thread is named by the run id) to end."""
    for t in threading.enumerate():
        if t.name == run_id:
            t.join(10)


class FakeJobs:
    def __init__(self):
        self.jobs: dict[str, str] = {}
        self.submitted: list[tuple[str, str]] = []

    def list_jobs(self):
        return [SimpleNamespace(submission_id=i, status=s, start_time=0)
                for i, s in self.jobs.items()]

    def submit_job(self, entrypoint, submission_id, runtime_env):
        self.jobs[submission_id] = "RUNNING"
        self.submitted.append((submission_id, entrypoint))
        return submission_id

    def get_job_status(self, job_id):
        return self.jobs[job_id]

    def stop_job(self, job_id):
        self.jobs[job_id] = "STOPPED"


def test_scheduler_records_outcomes_and_production(settings):
    settings.schedule.retrain_interval, settings.schedule.analyze_interval = 60, 10
    jobs, gate, ran = FakeJobs(), threading.Event(), []

    def analyze():  # the in-process analytics run: held until the test lets it finish
        ran.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        gate.wait(10)

    sched = Scheduler(settings, jobs, analyze=analyze)
    t0 = sched.logic.started
    sched.step(t0 + 61)
    assert [i.split("-")[1] for i, _ in jobs.submitted] == ["retrain"]  # analytics: no job
    retrain_id, entry = jobs.submitted[0]
    assert entry.endswith(f"-m jobs.retrain --result {Keys.retrain_result(retrain_id)}")
    assert entry.startswith("nice -n 19 ")
    state = json.loads((settings.var_dir / "schedule" / "state.json").read_text())
    assert set(state["running"]) == {"retrain", "analyze"}
    sched.step(t0 + 65)
    deadline = time.monotonic() + 10  # the analytics thread may not have run yet (busy CPUs)
    while not ran and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "analyze" in sched.logic.running and len(ran) == 1  # still running: not again
    assert ran == [19]  # its thread at the lowest CPU priority
    gate.set()
    analyze_id = sched.logic.running["analyze"][0]
    join_run(analyze_id)

    jobs.jobs[retrain_id] = "FAILED"  # crashed: no result file
    sched.step(t0 + 70)
    runs = {r["kind"]: r for r in settings.shared_store().log(Keys.schedule_runs).read()}
    assert runs["retrain"]["outcome"] == "FAILED"
    assert "production is unchanged" in runs["retrain"]["error"]
    assert runs["analyze"]["outcome"] == "SUCCEEDED" and runs["analyze"]["id"] == analyze_id
    assert not [i for i, _ in jobs.submitted[1:] if "retrain" in i]  # not due again yet
    assert "analyze" not in sched.logic.running

    # a restarted scheduler adopts a running retrain job instead of starting another
    jobs.jobs[retrain_id] = "RUNNING"
    again = Scheduler(settings, jobs)
    assert "retrain" in again.logic.running and again.logic.due(t0 + 10_000) == ["analyze"]


def test_a_failing_analytics_run_is_recorded_and_the_schedule_goes_on(settings):
    settings.schedule.analyze_interval = 10

    def analyze():
        raise RuntimeError("lake unreadable")

    sched = Scheduler(settings, FakeJobs(), analyze=analyze)
    t0 = sched.logic.started
    sched.step(t0 + 10)
    analyze_id = sched.logic.running["analyze"][0]
    join_run(analyze_id)
    sched.step(t0 + 11)
    sched.step(t0 + 20)
    runs = settings.shared_store().log(Keys.schedule_runs).read()
    assert [r["outcome"] for r in runs] == ["FAILED"] and "analyze" in sched.logic.running


def test_a_run_whose_record_cannot_be_written_is_recorded_on_the_next_poll(settings):
    """The store away when a run ends: the run stays running (no retrain or cycle starts
    beside it) and is recorded, once, when the store is back."""
    settings.schedule.analyze_interval = 10
    sched = Scheduler(settings, FakeJobs(), analyze=lambda: None)
    t0 = sched.logic.started
    sched.step(t0 + 10)
    analyze_id = sched.logic.running["analyze"][0]
    join_run(analyze_id)
    append, failures = sched.runs.append, []

    def away(record):
        failures.append(record)
        raise OSError("store unreachable")

    sched.runs.append = away
    sched.step(t0 + 11)  # logged; the step goes on
    assert failures and sched.logic.running["analyze"][0] == analyze_id
    sched.runs.append = append
    sched.step(t0 + 12)
    runs = settings.shared_store().log(Keys.schedule_runs).read()
    assert [(r["id"], r["outcome"]) for r in runs] == [(analyze_id, "SUCCEEDED")]
    assert analyze_id not in sched._local and sched.logic.next_due("analyze") == t0 + 20


def test_a_retrain_whose_result_cannot_be_read_is_recorded_with_the_error(settings):
    """A result the scheduler cannot parse (a job of another version wrote it) is written
    into the run's record as its error; the schedule goes on."""
    settings.schedule.retrain_interval = 60
    jobs = FakeJobs()
    sched = Scheduler(settings, jobs)
    t0 = sched.logic.started
    sched.step(t0 + 60)
    retrain_id = next(i for i, _ in jobs.submitted if "retrain" in i)
    settings.shared_store().put_json(Keys.retrain_result(retrain_id), {"A": {"bogus": 1}})
    jobs.jobs[retrain_id] = "SUCCEEDED"
    sched.step(t0 + 61)
    run, = [r for r in settings.shared_store().log(Keys.schedule_runs).read()
            if r["kind"] == "retrain"]
    assert run["outcome"] == "SUCCEEDED" and "could not be read" in run["error"]
    assert "retrain" not in sched.logic.running
    sched.step(t0 + 121)
    assert sum("retrain" in i for i, _ in jobs.submitted) == 2  # the next one on time


def test_an_overrunning_retrain_is_stopped_and_recorded(settings):
    settings.schedule.retrain_interval, settings.schedule.retrain_timeout = 60, 100
    jobs = FakeJobs()
    sched = Scheduler(settings, jobs)
    t0 = sched.logic.started
    sched.step(t0 + 60)
    retrain_id = next(i for i, _ in jobs.submitted if "retrain" in i)
    sched.step(t0 + 150)
    assert jobs.jobs[retrain_id] == "RUNNING"  # within its time
    sched.step(t0 + 161)
    assert jobs.jobs[retrain_id] == "STOPPED"
    run = [r for r in settings.shared_store().log(Keys.schedule_runs).read()
           if r["kind"] == "retrain"][0]
    assert run["outcome"] == "TIMEOUT" and "production is unchanged" in run["error"]


def test_a_retrain_request_is_submitted_on_the_next_tick_once(settings):
    """"Retrain now" from the API: submitted at once if none runs, after the running one if
    one does, and the request is gone once a retrain started after it."""
    from backend.core.requests import RetrainRequest, pending_retrain, request_retrain

    settings.schedule.retrain_interval, settings.schedule.analyze_interval = 3600, 3600
    jobs, path = FakeJobs(), settings.shared_store()
    sched = Scheduler(settings, jobs, analyze=lambda: None)
    t0 = sched.logic.started
    sched.step(t0 + 1)
    assert jobs.submitted == []  # nothing due, nothing asked
    request_retrain(path, RetrainRequest(actor="user:alice", requested=t0 + 2))
    sched.step(t0 + 3)
    assert len(jobs.submitted) == 1 and pending_retrain(path) is None
    first = jobs.submitted[0][0]
    request_retrain(path, RetrainRequest(actor="user:bob", requested=t0 + 4))
    sched.step(t0 + 5)  # asked while one runs: waits
    assert len(jobs.submitted) == 1 and pending_retrain(path) is not None
    jobs.jobs[first] = "SUCCEEDED"
    sched.step(t0 + 6)  # the first ended: the waiting request is submitted
    assert len(jobs.submitted) == 2 and pending_retrain(path) is None
    jobs.jobs[jobs.submitted[1][0]] = "SUCCEEDED"
    sched.step(t0 + 7)
    sched.step(t0 + 8)
    assert len(jobs.submitted) == 2  # answered requests are not submitted again


def test_a_request_older_than_the_latest_retrain_is_answered_by_it():
    logic = SchedulerLogic({"retrain": 100, "analyze": 1000}, started=0.0)
    logic.submitted("retrain", "r1", 50)
    logic.finished("retrain")
    assert logic.due(70, requested=40) == []  # r1 started after it
    assert logic.due(70, requested=65) == ["retrain"]


def test_a_request_a_scheduled_retrain_answered_is_removed(settings):
    from backend.core.requests import RetrainRequest, pending_retrain, request_retrain

    settings.schedule.retrain_interval, settings.schedule.analyze_interval = 10, 3600
    jobs, path = FakeJobs(), settings.shared_store()
    sched = Scheduler(settings, jobs, analyze=lambda: None)
    t0 = sched.logic.started
    sched.step(t0 + 11)  # the scheduled retrain starts ...
    request_retrain(path, RetrainRequest(actor="user:alice", requested=t0 + 10))  # ... late
    sched.step(t0 + 12)
    assert pending_retrain(path) is None and len(jobs.submitted) == 1
