"""Scheduler decisions and records, with a fake Jobs API (the real one: integration test)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from backend.files import read_jsonl
from jobs.schedule import Scheduler, SchedulerLogic, result_path


def test_due_and_never_two_of_a_kind():
    logic = SchedulerLogic({"retrain": 100, "analyze": 10}, started=0.0)
    assert logic.due(5) == []
    assert logic.due(10) == ["analyze"]
    logic.submitted("analyze", "a1", 10)
    assert logic.due(100) == ["retrain"]  # analyze still running: not again
    logic.submitted("retrain", "r1", 100)
    assert logic.due(500) == []  # both running, however late
    rec = logic.finished("retrain", "FAILED", 520)
    assert rec == {"kind": "retrain", "id": "r1", "start": 100, "end": 520, "outcome": "FAILED"}
    assert logic.due(520) == ["retrain"]


def test_resume_keeps_the_interval_across_restarts():
    runs = [{"kind": "retrain", "start": 1000.0}, {"kind": "retrain", "start": 900.0}]
    logic = SchedulerLogic.resume({"retrain": 3600, "analyze": 60}, runs, now=1500.0)
    assert logic.next_due("retrain") == 4600 and logic.next_due("analyze") == 1560


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
    jobs = FakeJobs()
    sched = Scheduler(settings, jobs)
    t0 = sched.logic.started
    sched.step(t0 + 61)
    kinds = sorted(i.split("-")[1] for i, _ in jobs.submitted)
    assert kinds == ["analyze", "retrain"]
    retrain_id, entry = next((i, e) for i, e in jobs.submitted if "retrain" in i)
    assert entry.endswith(f"-m jobs.retrain --result {result_path(settings, retrain_id)}")
    assert entry.startswith("nice -n 19 ")
    state = json.loads((settings.var_dir / "schedule" / "state.json").read_text())
    assert set(state["running"]) == {"retrain", "analyze"}

    jobs.jobs[retrain_id] = "FAILED"  # crashed: no result file
    sched.step(t0 + 70)
    runs = read_jsonl(settings.var_dir / "schedule" / "runs.jsonl")
    assert runs[0]["kind"] == "retrain" and runs[0]["outcome"] == "FAILED"
    assert "production is unchanged" in runs[0]["error"]
    assert not [i for i, _ in jobs.submitted[2:] if "retrain" in i]  # not due again yet

    # a restarted scheduler adopts the running analyze job instead of starting another
    again = Scheduler(settings, jobs)
    assert "analyze" in again.logic.running
    assert again.logic.next_due("retrain") == t0 + 61 + 60


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
    run = [r for r in read_jsonl(settings.var_dir / "schedule" / "runs.jsonl")
           if r["kind"] == "retrain"][0]
    assert run["outcome"] == "TIMEOUT" and "production is unchanged" in run["error"]
