"""Every local path under `var/` and every key of the shared store, spelled once.
`Settings.layout` builds the local layout (this node's pid files, write-ahead logs, caches,
keys); the shared store's keys (`Keys`) are the same on every node and every backend, and
on the default local store they are paths under `var/` too."""

from __future__ import annotations

from datetime import UTC, datetime
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
    def wal(self) -> Path:
        """Producers' write-ahead logs (node-local durability: accepted writes until the
        lake holds them, events while the broker is away), a folder per owner."""
        return self.root / "wal"

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
    def demo(self) -> Path:
        return self.root / "demo"


class Keys:
    """Keys of the shared store (`backend.core.store`): state several nodes read or write."""

    registry = "registry"
    audit = "registry/experiments/audit"  # a RecordLog
    snapshots = "analytics/snapshots"
    latest_snapshot = "analytics/latest.json"
    probes = "analytics/probes"  # a RecordLog
    quarantine = "analytics/quarantine"  # a Document
    schedule_runs = "schedule/runs"  # a RecordLog
    schedule_state = "schedule/state.json"
    retrain_request = "schedule/retrain-request.json"
    ground_truth = "sim/ground_truth.json"  # the simulator's bots and targets: tests only
    last_sim_run = "sim/last_run.json"
    releases = "catalog/releases"  # a RecordLog: items released after MovieLens

    @staticmethod
    def snapshot(stamp: str) -> str:
        return f"{Keys.snapshots}/{stamp}.json"

    @staticmethod
    def snapshot_stamp(end: datetime) -> str:
        """The stamp naming the snapshot of the window ending at `end` (naive: UTC): keys
        sort as their windows' ends do, which retention and the dashboard's ranges use."""
        return (end.astimezone(UTC) if end.tzinfo else end).strftime("%Y%m%dT%H%M%SZ")

    @staticmethod
    def retrain_result(job_id: str) -> str:
        return f"schedule/results/{job_id}.json"
