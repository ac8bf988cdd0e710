"""Soak: the running platform (`make up`, simulator job included) under a fixed-rate HTTP load
for a bounded time; nothing may be lost, nothing may leak.

The load is open-loop (request i is sent at start + i / rate, whatever the latency): 80%
`GET /recommend?user_id=` (JSON, so each answer names its variant), 10% `POST /watch`, 10%
`POST /rate`, users drawn from MovieLens, with the simulator's client key. Every write the
API accepted (202) carries an event_id chosen here; after the run the bench waits until the
lake holds them and counts lost and duplicated ones. Memory (RSS) of every platform process
is read from /proc at the start and the end.

    python bench/soak.py [--rps 50] [--duration 600]     (make up first)
Prints a table and writes var/bench/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.core.settings import Settings  # noqa: E402
from backend.data.lake import Lake  # noqa: E402
from backend.ops.procs import cmdlines  # noqa: E402

PROCESS_KINDS = {  # command-line fragment -> name in the report
    "tansu": "broker", "gcs_server": "ray gcs", "raylet": "raylet",
    "ray::ServeReplica:reco:Ingress": "serve ingress", "ray::ServeReplica:reco:VariantA":
    "serve variant A", "ray::ServeReplica:reco:VariantB": "serve variant B",
    "ray::ServeReplica:reco:ServingState": "serve state",
    "ray::ServeReplica:reco:RecoLog": "serve reco log", "ray::ServeController":
    "serve controller", "ray::ProxyActor": "serve proxy", "ray::IngestActor": "ingest actors",
    "ray::SchedulerActor": "scheduler", "streamlit": "dashboard", "jobs.simulate": "simulator",
    "dashboard/dashboard.py": "ray dashboard",
}


def memory() -> dict[str, float]:
    """RSS in MB summed per process kind."""
    out: dict[str, float] = defaultdict(float)
    for pid, cmd in cmdlines():
        name = next((n for fragment, n in PROCESS_KINDS.items() if fragment in cmd), None)
        try:
            rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status")
                       .read_text().splitlines() if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
        if name:
            out[name] += rss / 1024
    return dict(sorted(out.items()))


class Load:
    def __init__(self, url: str, key: str, users: list[int], items: list[int], seed: int):
        self.url, self.key = url, key
        self.users, self.items = users, items
        self.rng = random.Random(seed)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.status: Counter = Counter()
        self.accepted: list[str] = []
        self.errors = 0

    async def one(self, client: httpx.AsyncClient) -> None:
        user, roll = self.rng.choice(self.users), self.rng.random()
        now = datetime.now(UTC).isoformat()
        t0 = time.perf_counter()
        try:
            if roll < 0.8:
                r = await client.get("/recommend", params={"user_id": user, "k": 10})
                key = r.json().get("variant", "?") if r.status_code == 200 else "recommend"
            else:
                event_id = str(uuid.uuid4())
                body = {"event_id": event_id, "user_id": user,
                        "item_id": self.rng.choice(self.items), "ts": now}
                route = "/watch" if roll < 0.9 else "/rate"
                body |= {"minutes": 42.0} if route == "/watch" else {
                    "rating": self.rng.randint(1, 5)}
                r = await client.post(route, json=body)
                key = route
                if r.status_code == 202:
                    self.accepted.append(event_id)
            self.status[f"{r.status_code}"] += 1
            if r.status_code >= 400:
                self.errors += 1
        except httpx.HTTPError as exc:
            self.status[type(exc).__name__] += 1
            self.errors += 1
            key = "error"
        self.latency[key].append((time.perf_counter() - t0) * 1000)

    async def run(self, rps: float, duration: float, concurrency: int) -> float:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=self.url, headers={"X-API-Key": self.key},
                                     limits=limits, timeout=30) as client:
            slots = asyncio.Semaphore(concurrency)
            tasks: set[asyncio.Task] = set()
            loop = asyncio.get_running_loop()

            def done(t: asyncio.Task) -> None:
                tasks.discard(t)
                slots.release()

            start, n = loop.time(), 0
            while loop.time() - start < duration:
                due = start + n / rps
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                await slots.acquire()
                task = asyncio.create_task(self.one(client))
                tasks.add(task)
                task.add_done_callback(done)
                n += 1
            await asyncio.gather(*tasks)
            return loop.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rps", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--landing-timeout", type=float, default=300.0)
    args = parser.parse_args()
    settings = Settings()
    url = f"http://{settings.serve.host}:{settings.serve.port}"
    try:
        assert httpx.get(url + "/health", timeout=5).json()["status"] == "ok"
    except Exception:  # noqa: BLE001 - any failure means the same thing here
        sys.exit(f"the platform does not answer at {url}: run `make up` first")
    assert settings.registry.keys_dir is not None  # Settings fills it in
    key = (settings.registry.keys_dir / "sim.key").read_text().strip()
    from backend.data.movielens import load

    ml = load(settings.data_cache)
    lake = Lake.open(settings)
    dlq_before = lake.count("events.dlq")
    mem_start = memory()
    load_ = Load(url, key, ml.users["user_id"].tolist(), ml.items["item_id"].tolist(),
                 args.seed)
    print(f"soak: {args.rps} req/s for {args.duration:.0f} s against {url}", flush=True)
    seconds = asyncio.run(load_.run(args.rps, args.duration, args.concurrency))
    mem_end = memory()

    # every accepted write must land exactly once
    wanted = set(load_.accepted)
    deadline = time.monotonic() + args.landing_timeout
    while True:
        ids = []
        for topic in ("events.watch", "events.rating"):
            ids += lake.read(topic, columns=["event_id"])["event_id"].tolist()
        counts = Counter(i for i in ids if i in wanted)
        if len(counts) == len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(3)
    lost = len(wanted) - len(counts)
    duplicated = sum(1 for c in counts.values() if c > 1)
    total = sum(load_.status.values())
    rows = {}
    for name, values in sorted(load_.latency.items()):
        a = np.asarray(values)
        rows[name] = {"n": len(a), "p50": float(np.percentile(a, 50)),
                      "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99))}
    every = np.concatenate([np.asarray(v) for v in load_.latency.values()])
    result = {
        "rps_target": args.rps, "duration_s": round(seconds, 1), "requests": total,
        "achieved_rps": round(total / seconds, 2), "errors": load_.errors,
        "error_rate": load_.errors / max(total, 1), "status": dict(load_.status),
        "latency_ms": rows, "p99_all_ms": float(np.percentile(every, 99)),
        "writes_accepted": len(wanted), "writes_in_lake": len(counts), "lost": lost,
        "duplicated": duplicated, "dlq_new": lake.count("events.dlq") - dlq_before,
        "memory_mb": {k: {"start": round(mem_start.get(k, 0), 1),
                          "end": round(mem_end.get(k, 0), 1)}
                      for k in sorted(set(mem_start) | set(mem_end))},
    }
    print(f"\nrequests {total} in {seconds:.0f} s ({result['achieved_rps']} req/s), "
          f"errors {load_.errors} ({result['error_rate']:.4%}), status {dict(load_.status)}")
    print(f"{'route/variant':<16}{'n':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for name, r in rows.items():
        print(f"{name:<16}{r['n']:>8}{r['p50']:>10.1f}{r['p95']:>10.1f}{r['p99']:>10.1f}")
    print(f"p99 over all requests: {result['p99_all_ms']:.1f} ms")
    print(f"writes accepted {len(wanted)}, in the lake {len(counts)}, lost {lost}, "
          f"duplicated {duplicated}; new dead letters {result['dlq_new']}")
    print(f"\n{'process':<20}{'RSS start MB':>14}{'RSS end MB':>12}")
    for name, m in result["memory_mb"].items():
        print(f"{name:<20}{m['start']:>14.1f}{m['end']:>12.1f}")
    out = ROOT / "var" / "bench" / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
