"""The write-ahead log alone: what an accepted write's fsync costs on this machine's disk,
and how group commit shares it. `writers` asyncio tasks in one loop (as in an ingress
replica) each append a rating-sized record and await its durability, over and over, for
`--seconds`; 1, 8 and 32 writers.

    python bench/wal.py [--seconds 5]
Prints writes/s, fsyncs/s, records per fsync and the latency of `append + durable`;
writes var/bench/wal.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.data import wal as walmod  # noqa: E402
from backend.data.wal import WriteAheadLog  # noqa: E402


def leg(folder: Path, writers: int, seconds: float) -> dict:
    log = WriteAheadLog(folder, max_bytes=1 << 34)
    fsyncs = [0]
    real = os.fdatasync

    def counted(fd: FileDescriptorLike) -> None:
        fsyncs[0] += 1
        real(fd)

    walmod.os.fdatasync = counted
    latencies: list[float] = []

    async def writer(deadline: float) -> None:
        while time.perf_counter() < deadline:
            eid = str(uuid.uuid4())
            value = json.dumps({"event_id": eid, "ts": "2026-01-01T00:00:00Z", "user_id": 7,
                                "item_id": 42, "rating": 4}).encode()
            t0 = time.perf_counter()
            entry = log.append("events.rating", b"7", value, eid)
            await log.durable(entry.seq)
            latencies.append((time.perf_counter() - t0) * 1000)

    async def run() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(writer(t0 + seconds) for _ in range(writers)))
        return time.perf_counter() - t0

    try:
        took = asyncio.run(run())
    finally:
        walmod.os.fdatasync = real
        log.close()
    a = np.asarray(latencies)
    return {"writers": writers, "writes_per_s": round(len(a) / took, 1),
            "fsyncs_per_s": round(fsyncs[0] / took, 1),
            "records_per_fsync": round(len(a) / max(fsyncs[0], 1), 2),
            "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    rows = []
    base = ROOT / "var" / "bench"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:  # the disk var/ is on
        for writers in (1, 8, 32):
            r = leg(Path(tmp) / f"w{writers}", writers, args.seconds)
            rows.append(r)
            print(f"writers={writers:<3} {r['writes_per_s']:>9} writes/s "
                  f"{r['fsyncs_per_s']:>8} fsyncs/s {r['records_per_fsync']:>6} per fsync "
                  f"p50 {r['p50_ms']:>7} ms p99 {r['p99_ms']:>7} ms", flush=True)
    out = base / "wal.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
