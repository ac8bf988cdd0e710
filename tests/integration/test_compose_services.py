"""compose.yaml's store and broker commands, run here as real processes (no Docker engine):
SeaweedFS with the compose file's own arguments and the secrets `reco compose-secrets`
writes, the bucket `reco store bucket` creates on it as the head does first, and `reco
broker serve` on the address it is told."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration
RECO = str(Path(sys.executable).with_name("reco"))


def _reco(env: dict[str, str], *args: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    out = subprocess.run([RECO, *args], env=clean | env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_seaweedfs_with_the_compose_arguments_and_secrets_serves_the_platforms_bucket(
        tmp_path):
    from backend.core.settings import Settings
    from backend.core.store import Store
    from backend.ops.containers import write_compose_secrets
    from backend.ops.objectstore import weed_binary

    secrets = tmp_path / "secrets"
    write_compose_secrets(secrets)
    service = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["seaweedfs"]
    (tmp_path / "data").mkdir()
    s3 = free_port()
    # the compose file's arguments; the container's paths, name and ports put right for this
    # machine after them (the last of a repeated flag wins)
    here = {"-dir": tmp_path / "data", "-ip": "127.0.0.1", "-ip.bind": "127.0.0.1",
            "-s3.port": s3, "-s3.config": secrets / "seaweedfs-s3.json"}
    here |= {f"-{part}.port{grpc}": free_port() for part in ("master", "volume", "filer")
             for grpc in ("", ".grpc")} | {"-s3.port.grpc": free_port()}
    cmd = [weed_binary(), *service["command"][1:], *(f"{k}={v}" for k, v in here.items())]
    with open(tmp_path / "weed.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # compose's health check
            assert proc.poll() is None, (tmp_path / "weed.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{s3}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "seaweedfs did not answer /healthz"
            time.sleep(0.5)
        env = {"RECO_VAR_DIR": str(tmp_path / "var"), "RECO_STORE__URI": "s3://reco/platform",
               "RECO_STORE__ENDPOINT": f"http://127.0.0.1:{s3}",
               "RECO_STORE__CREDENTIALS_FILE": str(secrets / "store.json")}
        assert "bucket reco created" in _reco(env, "store", "bucket")
        assert "bucket reco present" in _reco(env, "store", "bucket")
        settings = Settings.model_validate({"var_dir": tmp_path / "var", "store": {
            "uri": env["RECO_STORE__URI"], "endpoint": env["RECO_STORE__ENDPOINT"],
            "credentials_file": secrets / "store.json"}})
        store = Store.open(settings.store)
        assert store.keys("lake") == []  # a list in the bucket, as a first start does
        store.put("probe.json", b"{}")
        assert store.get("probe.json") == b"{}"
    finally:
        proc.kill()
        proc.wait(10)


def test_reco_broker_serve_is_tansu_on_the_address_it_is_told(tmp_path):
    from backend.core.settings import KafkaSettings
    from backend.data.kafka import ensure_topics
    from backend.ops.procs import port_open

    port = free_port()
    with open(tmp_path / "broker.log", "wb") as log:
        proc = subprocess.Popen([RECO, "broker", "serve", f"--listen=127.0.0.1:{port}",
                                 f"--advertise=127.0.0.1:{port}"], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None, (tmp_path / "broker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the broker did not listen"
            time.sleep(0.2)
        # the command became the broker itself (exec): compose stops the broker, not a shell
        assert "tansu" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        created = ensure_topics(KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"))
        assert "events.rating" in created
    finally:
        proc.kill()
        proc.wait(10)
