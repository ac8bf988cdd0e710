"""The deployed graph without a cluster: `build_app` run in Serve's local testing mode, every
deployment in one process, the HTTP API driven in-process (local testing mode has no HTTP
proxy). No broker either: the writes and the reco log go to the spools, as in an outage.

It runs in a child process: local testing mode has no shutdown, and its replicas' loops
(RecoLog's push of the process's metric delta among them) would outlive the test."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

from backend.serving.auth import digest
from tests.conftest import free_port

CLIENT, ADMIN = "local-client-key", "local-admin-key"


def _scenario() -> dict[str, Any]:
    """In the child: register models, run the graph, answer a few requests."""
    import asyncio

    import httpx
    from ray import serve

    from backend.core.settings import Settings
    from backend.ml.recommenders import DiversityKNN, ItemKNN
    from backend.serving import api as http
    from backend.serving.builder import build_app
    from backend.serving.schemas import AppArgs
    from registry import open_registry
    from tests.unit.test_recommenders import dataset

    registry = open_registry(Settings(), signer=True)
    for variant, model in (("A", ItemKNN()), ("B", DiversityKNN())):
        registry.promote(variant, registry.register(variant, model.fit(*dataset()), {}, {}))
    serve.run(build_app(AppArgs(split=0.3, b_runtime={"tail_slots": 3})),
              _local_testing_mode=True)

    async def requests() -> dict[str, Any]:
        out: dict[str, Any] = {}
        transport = httpx.ASGITransport(app=http.api)
        async with httpx.AsyncClient(transport=transport, base_url="http://local") as c:
            client, admin = {"X-API-Key": CLIENT}, {"X-API-Key": ADMIN}
            out["plain"] = (await c.get("/recommend/5", params={"k": 4}, headers=client)).text
            r = await c.get("/recommend", params={"user_id": 5, "k": 4}, headers=client)
            out["json"] = r.json()
            out["health_before"] = (await c.get("/health")).json()
            out["rate"] = (await c.post("/rate", json={"user_id": 1, "item_id": 2, "rating": 4},
                                        headers=client)).status_code
            out["split"] = (await c.post("/admin/split", json={"split": 1.0},
                                         headers=admin)).json()
            out["variants"] = sorted({(await c.get("/recommend", params={"user_id": u},
                                                   headers=client)).json()["variant"]
                                      for u in range(1, 30)})
            for _ in range(50):  # RecoLog and the ingress push their spools every second
                health = (await c.get("/health")).json()
                if health["spool_depth"] >= 30:
                    break
                await asyncio.sleep(0.2)
            out["health_after"] = health
            out["metrics"] = (await c.get("/metrics")).text
        await http.answering().close()
        return out

    return asyncio.run(requests())


def test_the_graph_answers_in_local_testing_mode(tmp_path: Path, monkeypatch):
    keys = {"sim": {"sha256": digest(CLIENT), "role": "client", "per_minute": 100000},
            "ops": {"sha256": digest(ADMIN), "role": "admin"}}
    env = {"RECO_VAR_DIR": str(tmp_path / "var"), "RECO_SERVE__API_KEYS": json.dumps(keys),
           "RECO_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",  # nobody listens
           "RECO_KAFKA__BOOTSTRAP_TIMEOUT_MS": "500"}
    for k, v in env.items():  # the child's Settings() reads them, as replicas do
        monkeypatch.setenv(k, v)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        out = pool.apply(_scenario)
    assert len(out["plain"].split(",")) == 4
    body = out["json"]
    assert body["user_id"] == 5 and body["model_version"] == "v0001" and len(body["items"]) == 4
    before = out["health_before"]
    assert before["split"] == 0.3  # the ingress's user_config, through the shared state
    assert before["variants"]["B"]["runtime"] == {"tail_slots": 3.0}  # variant B's
    assert {v["version"] for v in before["variants"].values()} == {"v0001"}
    assert out["rate"] == 202 and out["split"] == {"split": 1.0, "salt": "exp-1"}
    assert out["variants"] == ["A"]
    after = out["health_after"]  # 31 recommendations logged, one rating: all spooled
    assert after["status"] == "degraded" and after["spool_depth"] >= 30
    assert "reco_model_info{" in out["metrics"] and 'route="/recommend"' in out["metrics"]
