"""No accepted write lost when the broker or an ingress replica dies (issue 20): the deployed
app over HTTP (two ingress replicas, each with its write-ahead log), the real embedded broker
(memory only: a SIGKILL loses everything it held), a running ingest job, the lake. Every
write answered 202 is counted by the event_id the answer names and must be in the lake
exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from backend.data.kafka import ensure_topics
from backend.data.lake import Lake
from backend.data.wal import read_segment
from tests.integration.conftest import ROOT
from tests.integration.test_serving import (  # noqa: F401 (a fixture: this module's own app)
    CLIENT,
    _replica_pids,
    get,
    serving_app,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # each about three minutes
WRITES = ("events.rating", "events.watch")


class Traffic:
    """Writes over HTTP from `workers` concurrent clients, about `rps` a second in all,
    ratings and watches alternating, each with a recommendation request between; records
    the event id of every 202 and the status (0: no answer) of every write, and the
    recommendation requests that got no 200."""

    def __init__(self, url: str, rps: float = 20.0, workers: int = 8, seed: int = 3) -> None:
        self.url, self.rps, self.workers = url, rps, workers
        self.rng = random.Random(seed)
        self.accepted: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.recommend_failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30,
                                     headers={"X-API-Key": CLIENT}) as client:
            await asyncio.gather(*(self._worker(client, w) for w in range(self.workers)))

    async def _worker(self, client: httpx.AsyncClient, w: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            user, item = self.rng.randint(1, 900), self.rng.randint(1, 1600)
            if n % 2:
                path, body = "/rate", {"user_id": user, "item_id": item,
                                       "rating": self.rng.randint(1, 5)}
            else:
                path, body = "/watch", {"user_id": user, "item_id": item, "minutes": 12.5}
            try:
                r = await client.post(path, json=body)
            except httpx.HTTPError:
                self.statuses[0] += 1
            else:
                self.statuses[r.status_code] += 1
                if r.status_code == 202:
                    self.accepted.append(r.json()["event_id"])
            try:
                if (await client.get(f"/recommend/{user}")).status_code != 200:
                    self.recommend_failures += 1
            except httpx.HTTPError:
                self.recommend_failures += 1
            await asyncio.sleep(self.workers / self.rps)


@pytest.fixture
def app(serving_app):  # noqa: F811
    """The module's app with a running ingest job (stopped by its process group after)."""
    env = serving_app["env"]
    log = open(serving_app["settings"].var_dir / "ingest.log", "ab")
    ingest = subprocess.Popen([sys.executable, "-m", "jobs.ingest"], env=env, cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield serving_app
    finally:
        os.killpg(ingest.pid, signal.SIGTERM)
        try:
            ingest.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(ingest.pid, signal.SIGKILL)
            ingest.wait()
        log.close()


def kill_broker(app: dict) -> None:
    broker = app["broker"]
    pid = broker.pid()
    assert pid is not None, "no broker to kill"
    os.kill(pid, signal.SIGKILL)
    while broker.pid() is not None:
        time.sleep(0.05)


def restart_broker(app: dict) -> None:
    app["broker"].start()
    ensure_topics(app["settings"].kafka)


def assert_landed_exactly_once(app: dict, accepted: list[str], timeout: float = 300) -> None:
    """Wait until the lake holds every accepted id; then none of them twice."""
    lake, want = Lake.open(app["settings"]), set(accepted)
    assert len(want) == len(accepted)  # the API assigned a fresh id to each write
    deadline, missing = time.monotonic() + timeout, want
    while missing:
        landed = {i for t in WRITES for i in lake.read(t, ["event_id"])["event_id"]}
        missing = want - landed
        if missing and time.monotonic() > deadline:
            tail = (app["settings"].var_dir / "ingest.log").read_text()[-4000:]
            raise AssertionError(f"{len(missing)} of {len(want)} accepted writes never reached "
                                 f"the lake; ingest log tail:\n{tail}")
        time.sleep(3)
    time.sleep(8)  # a late duplicate would land now
    counts = Counter(i for t in WRITES for i in lake.read(t, ["event_id"])["event_id"])
    twice = [i for i in want if counts[i] != 1]
    assert not twice, f"{len(twice)} accepted writes landed more than once"


def wait_drained(app: dict, timeout: float = 120) -> dict:
    """/health once no replica holds an accepted write the lake lacks, nor one waiting for
    the broker (twice in a row: both replicas answered, as a rule)."""
    deadline, good, health = time.monotonic() + timeout, 0, {}
    while good < 2:
        health = get(app, "/health").json()
        good = good + 1 if health["wal_pending"] == 0 and health["spool_depth"] == 0 else 0
        assert time.monotonic() < deadline, f"the write-ahead logs never drained: {health}"
        time.sleep(1)
    return health


def test_broker_killed_three_times_under_traffic_loses_no_accepted_write(app):
    """The issue's reproduction: writes with the client key while the memory-only broker is
    killed (SIGKILL) at three random moments and restarted empty. Every write is answered
    202 (from the log while the broker is away), and every one of them is in the lake
    exactly once: what the dead broker had acknowledged but the ingest had not landed is
    sent again from the replicas' logs once they see the new broker's cluster id."""
    rng = random.Random(20)
    with Traffic(app["url"]) as traffic:
        for _ in range(3):
            time.sleep(rng.uniform(6, 14))
            kill_broker(app)
            time.sleep(rng.uniform(1, 6))
            restart_broker(app)
        time.sleep(10)
    assert len(traffic.accepted) > 300, traffic.statuses
    assert set(traffic.statuses) == {202}, traffic.statuses  # every write accepted
    assert_landed_exactly_once(app, traffic.accepted)
    health = wait_drained(app)
    assert health["status"] == "ok", health


def _wal_folder(pid: int) -> Path:
    """The write-ahead log folder a replica process holds (its lock file is open)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith("/.lock") and "/wal/ingress/" in target:
            return Path(target).parent
    raise AssertionError(f"replica {pid} holds no write-ahead log")


def test_a_killed_ingress_replicas_log_is_adopted_and_replayed(app):
    """The broker is killed, so accepted writes exist only in the replicas' logs; then one
    ingress replica is killed (SIGKILL of its worker process; Serve starts another) and the
    broker restarted. The killed replica's log is adopted by a live replica on this node (or
    its replacement) and replayed: its writes, and every other accepted one, land once."""
    pids = _replica_pids(app, "Ingress")
    assert len(pids) == 2, pids
    victim = random.Random(4).choice(pids)
    folder = _wal_folder(victim)
    with Traffic(app["url"]) as traffic:
        time.sleep(8)
        kill_broker(app)
        killed_at = time.time()
        time.sleep(6)
        # what the victim accepted while no broker was there: in its log and nowhere else
        held = {r.event_id for f in sorted(folder.glob("*.wal")) for r in read_segment(f)
                if r.at >= killed_at}
        os.kill(victim, signal.SIGKILL)
        time.sleep(4)
        restart_broker(app)
        time.sleep(25)
    only_there = held & set(traffic.accepted)
    assert len(only_there) > 10, (len(held), traffic.statuses)
    assert traffic.statuses[202] > 300, traffic.statuses
    # the requests the victim was answering when it died got no answer, or an error; none
    # of them counts as accepted
    assert_landed_exactly_once(app, traffic.accepted)
    deadline = time.monotonic() + 60
    while folder.exists():  # adopted: its segments moved into a live replica's log
        assert time.monotonic() < deadline, f"{folder} never adopted"
        time.sleep(1)
    wait_drained(app)
    replaced = _replica_pids(app, "Ingress")
    assert len(replaced) == 2 and victim not in replaced, replaced
