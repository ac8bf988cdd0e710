"""Real services for integration tests: the embedded broker (per test) and a Ray head (per
session), on free ports, stopped by pid / process group at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from backend.core.runtime import ray_env
from backend.core.settings import Settings
from backend.data.kafka import ensure_topics
from backend.data.lake import Lake
from backend.ops.broker import EmbeddedBroker
from backend.ops.raycluster import RayHead
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RECO_", "RAY_"))}


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    var = tmp_path_factory.mktemp("ray") / "var"
    ports = {"head_port": free_port(), "dashboard_port": free_port(), "client_port": free_port(),
             "dashboard_agent_port": free_port(), "metrics_export_port": free_port()}
    settings = Settings(var_dir=var, ray=ports | {"num_cpus": 4}, serve={
        "haproxy_metrics_port": free_port(), "haproxy_stats_port": free_port()})
    head = RayHead(settings)
    with pytest.MonkeyPatch.context() as mp:  # Serve's fallback proxy: 8500 unless told, which
        # another suite's Serve on this machine may hold (the head's processes keep the env)
        mp.setenv("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", str(free_port()))
        try:
            head.start()
        except BaseException:  # `ray start` timing out leaves the head's processes running
            head.stop()
            raise
    yield head
    head.stop()


class Platform:
    """One test's settings, broker and helpers to run jobs against them."""

    def __init__(self, settings: Settings, broker: EmbeddedBroker, head: RayHead) -> None:
        self.settings = settings
        self.broker = broker
        self.head = head
        self.lake = Lake.open(settings)
        self.procs: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = _clean_env() | ray_env(self.head.settings) | {
            "RAY_ADDRESS": self.head.address,
            "RECO_VAR_DIR": str(self.settings.var_dir),
            "RECO_KAFKA__EMBEDDED_PORT": str(self.settings.kafka.embedded_port),
            "RECO_INGEST__IDLE_SECONDS": "6",
            "PYTHONPATH": str(ROOT),
        }
        return env | extra

    def run(self, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env(**extra), cwd=ROOT, timeout=timeout,
                              capture_output=True, text=True)

    def ingest_once(self, timeout: float = 240, **extra: str) -> subprocess.CompletedProcess:
        out = self.run(sys.executable, "-m", "jobs.ingest", "--once", timeout=timeout, **extra)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    def start_ingest(self, **extra: str) -> subprocess.Popen:
        log = open(self.settings.var_dir / "ingest.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "jobs.ingest"], env=self.env(**extra),
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.5)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()


@pytest.fixture
def platform(tmp_path, ray_head, monkeypatch):
    for key in list(os.environ):
        if key.startswith("RECO_"):
            monkeypatch.delenv(key)
    settings = Settings(var_dir=tmp_path / "var", kafka={"embedded_port": free_port()})
    broker = EmbeddedBroker(settings.kafka, settings.run_dir)
    broker.start()
    p = Platform(settings, broker, ray_head)
    try:  # also when the set-up itself fails
        ensure_topics(settings.kafka)
        yield p
    finally:
        p.stop_all()
        broker.stop()


@pytest.fixture(scope="session")
def movielens_wheel(tmp_path_factory) -> Path:
    """The recbole wheel, downloaded from PyPI once per session."""
    from backend.data.movielens import fetch

    return fetch(tmp_path_factory.mktemp("mlcache"))


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """The embedded S3 server (SeaweedFS) on a free port for the session; yields settings whose
    store is a bucket on it."""
    from backend.ops.objectstore import EmbeddedObjectStore

    var = tmp_path_factory.mktemp("seaweed") / "var"
    settings = Settings(var_dir=var, store={"uri": "s3://reco-test/shared",
                                            "embedded_port": free_port()})
    server = EmbeddedObjectStore(settings)
    server.start()
    try:
        yield settings
    finally:
        server.stop()
