"""The `reco` command line against real services."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from backend.data.movielens import WHEEL_NAME, load

pytestmark = pytest.mark.integration


def reco(platform, *args: str, timeout: float = 600):
    return platform.run(sys.executable, "-m", "backend.ops.cli", *args, timeout=timeout)


def test_broker_start_is_idempotent_and_stop_stops(platform):
    out = reco(platform, "broker", "start")
    assert out.returncode == 0 and "already running" in out.stdout, out.stderr
    status = reco(platform, "broker", "status")
    assert status.returncode == 0 and json.loads(status.stdout)["running"]
    admin = KafkaAdminClient(**platform.settings.kafka.client_config())
    topics = admin.describe_topics(["events.rating", "events.watch", "events.reco",
                                    "events.dlq"])
    admin.close()
    assert [len(t["partitions"]) for t in topics] == [3, 3, 3, 3]
    assert reco(platform, "topics", "create").stdout.strip() == "created: []"
    out = reco(platform, "broker", "stop")
    assert out.returncode == 0 and "broker stopped" in out.stdout
    assert reco(platform, "broker", "status").returncode == 3
    platform.broker.start()  # leave it as the fixture expects


def test_broker_refuses_non_loopback(platform):
    out = platform.run(sys.executable, "-m", "backend.ops.cli", "broker", "start",
                       RECO_KAFKA__EMBEDDED_HOST="0.0.0.0")
    assert out.returncode != 0 and "loopback" in (out.stderr + out.stdout)


@pytest.mark.slow  # make test-slow (about 70 s): keeps make test under 20 minutes
def test_bootstrap_lands_all_movielens_ratings(platform, movielens_wheel):
    cache = platform.settings.data_cache
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(movielens_wheel, cache / WHEEL_NAME)
    ml = load(cache)
    assert len(ml.ratings) == 100_000 and len(ml.items) == 1682 and len(ml.users) == 943
    assert ml.ratings["rating"].between(1, 5).all()
    assert str(ml.ratings["ts"].dt.tz) == "UTC"

    platform.start_ingest()
    out = reco(platform, "bootstrap", "--wait", "420")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "events.rating=100000" in out.stdout
    stats = json.loads(reco(platform, "lake", "stats", "--json").stdout)
    assert stats["events.rating"]["rows"] == 100_000
    assert stats["events.watch"]["rows"] == 100_000
    assert stats["events.rating"]["newest_ts"].startswith("1998-04-22")
    table = reco(platform, "lake", "stats").stdout
    assert "100000" in table

    # the models issue: train on the bootstrapped lake, signed and promoted, verifiable
    out = reco(platform, "train")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("-> promoted") == 2, out.stdout
    out = reco(platform, "models", "verify")
    assert out.returncode == 0 and out.stdout.count("ok ") == 2, out.stdout
    listing = reco(platform, "models", "list").stdout
    assert "A v0001 production" in listing and "B v0001 production" in listing
    manifest = json.loads(reco(platform, "models", "show", "A").stdout)
    assert manifest["provenance"]["rows"] == 100_000
    assert manifest["metrics"]["ndcg"] > 0.1
    model_json = platform.settings.var_dir / "registry" / "A" / "v0001" / "model.json"
    model_json.write_text(model_json.read_text().replace("50", "51"))
    out = reco(platform, "models", "verify")
    assert out.returncode == 1 and "A/v0001: model.json does not match its digest" in out.stdout


def test_ray_job_submit_needs_the_token(ray_head):
    """Token auth on the head `reco up` starts: `ray job submit` without the token is refused
    (CVE-2023-48022: unauthenticated job submission), with it the job runs."""
    from backend.core.runtime import ray_env
    from tests.integration.conftest import _clean_env

    ray_cli = str(Path(sys.executable).with_name("ray"))
    cmd = [ray_cli, "job", "submit", "--address", ray_head.dashboard_url, "--", sys.executable,
           "-c", "print('token-ok')"]
    refused = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0 and "token-ok" not in refused.stdout
    wrong = _clean_env() | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    refused = subprocess.run(cmd, env=wrong, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "token-ok" not in refused.stdout
    ok = subprocess.run(cmd, env=_clean_env() | ray_env(ray_head.settings), capture_output=True,
                        text=True, timeout=180)
    assert ok.returncode == 0 and "token-ok" in ok.stdout, ok.stderr[-2000:]
