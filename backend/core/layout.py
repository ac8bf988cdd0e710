"""Every path under `var/`, spelled once. `Settings.layout` builds it; readers and writers of
the store (jobs, the dashboard, the CLI, tests) ask it instead of joining folder names."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class StoreLayout(BaseModel):
    """The state folder's layout; `root` is `Settings.var_dir` (absolute)."""

    model_config = ConfigDict(frozen=True)

    root: Path

    @property
    def run(self) -> Path:
        """Pid files, logs and secrets of the processes `reco up` starts."""
        return self.root / "run"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def cache(self) -> Path:
        """Downloads (MovieLens) and derived caches."""
        return self.root / "cache"

    @property
    def lake_cache(self) -> Path:
        """Consolidated copies of lake columns for readers that poll (see Lake.read_table)."""
        return self.cache / "lake"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def analytics(self) -> Path:
        return self.root / "analytics"

    @property
    def snapshots(self) -> Path:
        return self.analytics / "snapshots"

    def snapshot(self, stamp: str) -> Path:
        return self.snapshots / f"{stamp}.json"

    @property
    def latest_snapshot(self) -> Path:
        return self.analytics / "latest.json"

    @property
    def probes(self) -> Path:
        return self.analytics / "probes.jsonl"

    @property
    def schedule(self) -> Path:
        return self.root / "schedule"

    @property
    def schedule_runs(self) -> Path:
        return self.schedule / "runs.jsonl"

    @property
    def schedule_state(self) -> Path:
        return self.schedule / "state.json"

    @property
    def retrain_request(self) -> Path:
        """An operator's "retrain now", until the scheduler submits that retrain."""
        return self.schedule / "retrain-request.json"

    def retrain_result(self, job_id: str) -> Path:
        return self.schedule / "results" / f"{job_id}.json"

    @property
    def sim(self) -> Path:
        return self.root / "sim"

    @property
    def ground_truth(self) -> Path:
        """The simulator's bots, targets and releases: for tests and benchmarks only."""
        return self.sim / "ground_truth.json"

    @property
    def last_sim_run(self) -> Path:
        return self.sim / "last_run.json"

    @property
    def releases(self) -> Path:
        """Items released after MovieLens (appended by the simulator)."""
        return self.root / "catalog" / "releases.jsonl"

    @property
    def demo(self) -> Path:
        return self.root / "demo"
