"""A real three-node Ray cluster on this machine (a head and two workers, each from `ray start`
with its own ports, CPUs, small object store and token auth) over the shared store on
SeaweedFS: the retrain job reads the lake with Ray Data and promotes signed models, variant
replicas on the worker nodes serve them, events posted over HTTP reach the lake's Delta tables
through ingest actors spread over the nodes, and a worker node killed under load (SIGKILL of
its whole process group) costs no accepted write and no more than a pause in serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.integration.conftest import ROOT, _clean_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # about five minutes
CLIENT = "client-key-for-the-cluster-test"
HEAD, WORKER = "reco_head", "reco_worker"


def _ray(env: dict[str, str], code: str) -> object:
    """Run `code` (which prints one JSON value) as a driver of the cluster; its value."""
    out = subprocess.run([sys.executable, "-c", "import json, ray; ray.init(); " + code],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wait(cond, timeout: float, what: str, every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def _seed_lake(settings, movielens_wheel) -> None:
    """MovieLens-100K history straight into the lake's tables in the bucket (the bootstrap's
    own records), so the first retrain has something to learn."""
    import shutil

    from backend.data.batch import validate
    from backend.data.events import RatingEvent, WatchEvent
    from backend.data.lake import Lake
    from backend.data.movielens import WHEEL_NAME, load
    from jobs.bootstrap import history_events

    cache = settings.data_cache
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(movielens_wheel, cache / WHEEL_NAME)
    ratings, watches = history_events(load(cache).ratings)
    lake = Lake.open(settings)
    for topic, model, records in (("events.rating", RatingEvent, ratings),
                                  ("events.watch", WatchEvent, watches)):
        frame = validate(model, records).valid.drop(columns="_pos")
        lake.write(topic, frame.assign(kafka_partition=0, kafka_offset=range(len(frame))))


def test_three_nodes_on_seaweedfs_train_serve_and_lose_a_worker_without_losing_a_write(
        tmp_path, seaweed, movielens_wheel, monkeypatch):
    from backend.core.runtime import job_env, ray_env
    from backend.core.settings import Settings
    from backend.data.kafka import ensure_topics
    from backend.data.lake import Lake
    from backend.ops.broker import EmbeddedBroker
    from backend.ops.raycluster import RayHead, RayWorker
    from backend.serving.auth import digest
    from backend.serving.deploy import CONFIG, deploy
    from registry import open_registry

    uri = f"{seaweed.store.uri}/{uuid.uuid4().hex}"
    port = free_port()
    env = {
        "RECO_VAR_DIR": str(tmp_path / "var"), "RECO_KAFKA__EMBEDDED_PORT": str(free_port()),
        "RECO_STORE__URI": uri, "RECO_STORE__EMBEDDED_PORT": str(seaweed.store.embedded_port),
        "RECO_STORE__CREDENTIALS_FILE": str(seaweed.store.credentials_file),
        "RECO_RAY__HEAD_PORT": str(free_port()), "RECO_RAY__DASHBOARD_PORT": str(free_port()),
        "RECO_RAY__CLIENT_PORT": str(free_port()),
        "RECO_RAY__DASHBOARD_AGENT_PORT": str(free_port()),
        "RECO_RAY__METRICS_EXPORT_PORT": str(free_port()), "RECO_RAY__NUM_CPUS": "3",
        "RECO_RAY__RESOURCES": json.dumps({HEAD: 100}),
        "RECO_SERVE__PORT": str(port), "RECO_SERVE__RELOAD_SECONDS": "1",
        "RECO_SERVE__HAPROXY_METRICS_PORT": str(free_port()),
        "RECO_SERVE__HAPROXY_STATS_PORT": str(free_port()),
        "RECO_SERVE__API_KEYS": json.dumps({"load": {"sha256": digest(CLIENT),
                                                     "role": "client",
                                                     "per_minute": 1_000_000}}),
        "RECO_SERVE__PLACEMENT": json.dumps({"Ingress": {HEAD: 1}, "ServingState": {HEAD: 1},
                                             "RecoLog": {HEAD: 1}, "Variant": {WORKER: 1}}),
        "RECO_TRAIN__FORECAST_STEPS": "3", "RECO_TRAIN__FORECAST_VISITS": "50",
        "RECO_INGEST__IDLE_SECONDS": "6",
    }
    for key in [k for k in os.environ if k.startswith(("RECO_", "RAY_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    settings = Settings()
    head, broker = RayHead(settings), EmbeddedBroker(settings.kafka, settings.run_dir)
    workers = [RayWorker(settings, f"w{i}", [free_port() for _ in range(6)], num_cpus=2,
                         resources={WORKER: 100}) for i in (1, 2)]
    driver = _clean_env() | env | ray_env(settings) | {
        "RAY_ADDRESS": head.address, "PYTHONPATH": str(ROOT)}
    traffic_stop = threading.Event()
    try:
        broker.start()
        ensure_topics(settings.kafka)
        head.start()
        for w in workers:
            w.start()
        _wait(lambda: _ray(driver, "print(sum(n['Alive'] for n in ray.nodes()))") == 3, 60,
              "three live nodes")

        # a retrain on the cluster: Ray Data reads the lake's tables in the bucket
        _seed_lake(settings, movielens_wheel)
        jobs = head.job_client()
        retrain = jobs.submit_job(entrypoint=f"{sys.executable} -m jobs.retrain",
                                  runtime_env={"env_vars": job_env(settings)})
        _wait(lambda: str(jobs.get_job_status(retrain)) in ("SUCCEEDED", "FAILED",
                                                             "JobStatus.SUCCEEDED",
                                                             "JobStatus.FAILED"),
              400, "the retrain job", every=3)
        logs = jobs.get_job_logs(retrain)
        assert "SUCCEEDED" in str(jobs.get_job_status(retrain)), logs[-3000:]
        registry = open_registry(settings)
        assert {v: registry.aliases(v).production for v in "AB"} == {"A": "v0001",
                                                                      "B": "v0001"}
        read = "topic=events.rating version=0 files=1 partials=100000 via=ray_data"
        assert read in logs, logs[-3000:]  # the retrain read the table's files with Ray Data

        # serving: two replicas per variant, on the worker nodes only
        config = yaml.safe_load(CONFIG.read_text())
        for d in config["applications"][0]["deployments"]:
            if d["name"].startswith("Variant"):
                d["autoscaling_config"] = d["autoscaling_config"] | {
                    "min_replicas": 2, "max_replicas": 2, "initial_replicas": 2}
        custom = tmp_path / "serve_config.yaml"
        custom.write_text(yaml.safe_dump(config))
        deploy(settings, head.dashboard_url, custom)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                health = httpx.get(url + "/health", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                return False
            return health.get("status") == "ok" and all(
                health["variants"][v]["version"] == "v0001" for v in "AB")

        _wait(healthy, 300, "the app on the cluster", every=2)
        placed = _ray(driver, (
            "from ray.util.state import list_actors; "
            "nodes = {n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}; "
            "print(json.dumps([[a.class_name, 'reco_worker' in nodes.get(a.node_id, {})] "
            "for a in list_actors(filters=[('state', '=', 'ALIVE')], limit=1000) "
            "if 'Variant' in a.class_name or 'Ingress' in a.class_name]))"))
        variants = [on_worker for name, on_worker in placed if "Variant" in name]
        assert len(variants) == 4 and all(variants), placed  # A and B, two each, on workers
        assert not any(w for name, w in placed if "Ingress" in name)  # the ingress on the head
        ingest = jobs.submit_job(entrypoint=f"{sys.executable} -m jobs.ingest",
                                 runtime_env={"env_vars": job_env(settings)})
        actors_on = ("from ray.util.state import list_actors; "
                     "print(json.dumps(sorted({a.node_id for a in list_actors(filters=["
                     "('state', '=', 'ALIVE')], limit=1000) if a.class_name == '%s'})))")
        _wait(lambda: len(_ray(driver, actors_on % "IngestActor")) >= 2, 120,
              "ingest actors on more than one node")

        # traffic: ratings with the client key, recommendations in between
        accepted: list[str] = []
        outcomes: list[tuple[float, str, int]] = []

        def load() -> None:
            n = 0
            with httpx.Client(base_url=url, headers={"X-API-Key": CLIENT}, timeout=10) as c:
                while not traffic_stop.is_set():
                    n += 1
                    user = n % 900 + 1
                    try:
                        r = c.post("/rate", json={"user_id": user, "item_id": n % 1600 + 1,
                                                  "rating": n % 5 + 1})
                        if r.status_code == 202:
                            accepted.append(r.json()["event_id"])
                        outcomes.append((time.monotonic(), "rate", r.status_code))
                        r = c.get(f"/recommend/{user}", params={"k": 5})
                        outcomes.append((time.monotonic(), "recommend", r.status_code))
                    except httpx.HTTPError:
                        outcomes.append((time.monotonic(), "error", 0))
                    time.sleep(0.02)

        traffic = threading.Thread(target=load, daemon=True)
        traffic.start()
        time.sleep(20)
        killed_at = time.monotonic()
        assert workers[0].kill()  # a worker node lost under load
        time.sleep(45)
        _wait(lambda: sum(1 for t, kind, code in outcomes[-40:]
                          if kind == "recommend" and code == 200) >= 20, 120,
              "serving back on the other worker")
        traffic_stop.set()
        traffic.join(30)
        after = [(kind, code) for t, kind, code in outcomes if t > killed_at]
        replaced = _ray(driver, (
            "from ray.util.state import list_actors; "
            "nodes = {n['NodeID'] for n in ray.nodes() if n['Alive']}; "
            "print(json.dumps([a.node_id in nodes for a in list_actors(filters=["
            "('state', '=', 'ALIVE')], limit=1000) if 'Variant' in a.class_name]))"))
        assert len(replaced) == 4 and all(replaced), replaced  # back to two each, all live
        assert sum(1 for kind, code in after if kind == "recommend" and code == 200) > 20
        assert len(accepted) > 200

        # every accepted write lands exactly once
        lake = Lake.open(settings)
        want = set(accepted)

        def landed() -> bool:
            ids = lake.read("events.rating", ["event_id"])["event_id"]
            return want <= set(ids)

        _wait(landed, 240, "every accepted write in the lake", every=3)
        counts = Counter(lake.read("events.rating", ["event_id"])["event_id"])
        assert not [e for e in want if counts[e] != 1], "a write landed twice"
        jobs.stop_job(ingest)
    finally:
        traffic_stop.set()
        for w in workers:
            w.stop()
        head.stop()
        broker.stop()
