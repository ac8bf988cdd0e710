"""End-to-end ingest throughput: produce -> Kafka -> Ray ingest job -> lake, side by side for
batch validation (the platform) and per-message validation (the baseline), in one run.

Each leg gets a fresh embedded broker and lake. The ingest actors join their consumer group
first; the clock starts when a separate producer process starts sending and stops when the
lake holds every event (counted from Parquet footers, never from `end_offsets`). Also
measured: the producer alone, and validation alone (no Kafka), for context.

    python bench/ingest.py [--events 200000] [--baseline-events 3000]
Writes var/bench/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from backend.core.runtime import init_ray  # noqa: E402
from backend.core.settings import Settings  # noqa: E402
from backend.data import batch  # noqa: E402
from backend.data.kafka import EventProducer, encode, ensure_topics  # noqa: E402
from backend.data.lake import Lake  # noqa: E402
from backend.ops.broker import EmbeddedBroker  # noqa: E402
from jobs import ingest  # noqa: E402

TOPICS = ("events.rating", "events.watch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def events(n: int, seed: int = 0) -> list[tuple[str, bytes, int]]:
    out = []
    for i in range(n):
        user = (i * 7919 + seed) % 943 + 1
        base = {"event_id": str(uuid.uuid4()), "ts": "2024-06-01T12:00:00Z", "user_id": user,
                "item_id": i % 1682 + 1}
        if i % 2:
            out.append(("events.watch", encode(base | {"minutes": 42.0, "fraction": 0.5}), user))
        else:
            out.append(("events.rating", encode(base | {"rating": i % 5 + 1}), user))
    return out


def produce(settings: Settings, n: int, seed: int, wal: str, done) -> None:
    """Producer process: the platform's EventProducer, values pre-encoded like an API would."""
    evs = events(n, seed)
    producer = EventProducer(settings.kafka, Path(wal), start_flusher=False)
    t0 = time.perf_counter()
    for topic, value, user in evs:
        producer.send_raw(topic, value, str(user).encode())
    producer.flush()
    done.put(time.perf_counter() - t0)
    producer.close()


def leg(name: str, n: int, per_message: bool, workdir: Path) -> dict:
    settings = Settings(var_dir=workdir / name, kafka={"embedded_port": free_port()},
                        ingest={"per_message_validation": per_message})
    broker = EmbeddedBroker(settings.kafka, settings.run_dir)
    broker.start()
    try:
        ensure_topics(settings.kafka)
        workers, refs = ingest.start(settings)
        deadline = time.monotonic() + 60
        while not all(p["assigned"] for p in ray.get([w.progress.remote() for w in workers])):
            if time.monotonic() > deadline:
                raise RuntimeError("consumer group did not form")
            time.sleep(0.2)
        lake = Lake.open(settings)
        ctx = mp.get_context("spawn")
        done = ctx.Queue()
        t0 = time.perf_counter()
        proc = ctx.Process(
            target=produce, args=(settings, n, 1, str(settings.wal_dir / "bench"), done))
        proc.start()
        while sum(lake.count(t) for t in TOPICS) < n:
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        produce_s = done.get(timeout=60)
        proc.join()
        stats = ingest.stop(workers, refs)
    finally:
        broker.stop()
    landed = sum(lake.count(t) for t in TOPICS)
    return {"leg": name, "events": n, "landed": landed, "seconds": round(elapsed, 3),
            "events_per_s": round(n / elapsed), "producer_events_per_s": round(n / produce_s),
            "invalid": sum(sum(s["invalid"].values()) for s in stats),
            "batches": sum(s["batches"] for s in stats)}


def validation_only(n: int, per_message: bool) -> float:
    values: list[bytes | None] = [v for _, v, _ in events(n) if b'"rating"' in v]
    t0 = time.perf_counter()
    if per_message:
        for v in values:
            batch.process("events.rating", [v], 16384)
    else:
        for i in range(0, len(values), 5000):
            batch.process("events.rating", values[i:i + 5000], 16384)
    return len(values) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--baseline-events", type=int, default=3_000)
    args = parser.parse_args()
    out_dir = ROOT / "var" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ingest-", dir=out_dir))
    init_ray(Settings(var_dir=workdir))
    try:
        rows = [leg("batch (platform)", args.events, False, workdir),
                leg("per-message (baseline)", args.baseline_events, True, workdir)]
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    v_batch, v_single = validation_only(20_000, False), validation_only(1_000, True)
    ratio = rows[0]["events_per_s"] / rows[1]["events_per_s"]
    print(f"\nend to end: produce -> Kafka (embedded tansu) -> Ray ingest (3 actors) -> lake, "
          f"{os.cpu_count()} cores")
    print(f"{'leg':<24}{'events':>9}{'landed':>9}{'seconds':>9}{'events/s':>10}"
          f"{'producer/s':>12}{'batches':>9}")
    for r in rows:
        print(f"{r['leg']:<24}{r['events']:>9}{r['landed']:>9}{r['seconds']:>9}"
              f"{r['events_per_s']:>10}{r['producer_events_per_s']:>12}{r['batches']:>9}")
    print(f"batch / per-message end to end: {ratio:.1f}x (target >= 10x; batch target >= 15000/s)")
    print(f"validation alone (no Kafka): batch {v_batch:,.0f}/s, per-message {v_single:,.0f}/s, "
          f"{v_batch / v_single:.0f}x")
    result = {"legs": rows, "end_to_end_ratio": round(ratio, 1),
              "validation_only_per_s": {"batch": round(v_batch), "per_message": round(v_single)},
              "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
              "targets": {"batch_events_per_s": 15000, "ratio": 10}}
    (out_dir / "ingest.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out_dir / 'ingest.json'}")


if __name__ == "__main__":
    main()
