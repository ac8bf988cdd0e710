"""The feedback loop, measured: simulate -> ingest -> retrain -> serve, several cycles, once
with Model A serving everyone and once with Model B serving everyone, seeded.

Each arm runs the real platform in its own state folder: embedded broker, the ingest job on a
Ray head, MovieLens bootstrapped into the lake, a first retrain, the Ray Serve app with the
split at 100% for the arm. Then per cycle: the simulator drives the HTTP API for `--duration`
seconds; once the lake holds the cycle's recommendations, an analytics snapshot of the cycle
is taken (the analyze job's code); then `reco train` retrains on everything in the lake
(quarantine applied) and promotes, and the cycle waits until the arm serves the new version.
The promotion gate's NDCG tolerance is opened for the bench (the loop must close even if a
retrain on feedback data scores lower; the gate decisions are still recorded).

Per cycle it prints Gini, top-10 share, coverage and head/tail ratio of what was served, and
at the end the echo slope (least squares over the cycles, 95% CI) per arm.

    python bench/feedback.py [--cycles 5] [--duration 60] [--rps 15] [--seed 11]
Writes var/bench/feedback.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from backend.core.runtime import ray_env  # noqa: E402
from backend.core.settings import Settings  # noqa: E402
from backend.data.kafka import ensure_topics  # noqa: E402
from backend.data.lake import Lake  # noqa: E402
from backend.data.movielens import fetch  # noqa: E402
from backend.ml.metrics.feedback import trend  # noqa: E402
from backend.ops.broker import EmbeddedBroker  # noqa: E402
from backend.ops.raycluster import RayHead  # noqa: E402
from backend.serving.auth import digest  # noqa: E402

SIM_KEY = "feedback-bench-sim-key"  # loopback-only throwaway key for this bench's own stack


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Arm:
    """One arm's platform: its own var dir, broker, ingest job and Serve app."""

    def __init__(self, name: str, workdir: Path, head: RayHead, args) -> None:
        self.name = name
        self.args = args
        var = workdir / name
        shutil.rmtree(var, ignore_errors=True)
        (var / "cache").mkdir(parents=True)
        wheel = fetch(ROOT / "var" / "cache")  # downloaded once (a fresh clone has none)
        shutil.copy(wheel, var / "cache" / wheel.name)
        self.port = free_port()
        keys = {"sim": {"sha256": digest(SIM_KEY), "role": "client", "per_minute": 1e6}}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RECO_", "RAY_"))}
        self.env |= ray_env(head.settings) | {
            "RAY_ADDRESS": head.address, "PYTHONPATH": str(ROOT), "RECO_VAR_DIR": str(var),
            "RECO_KAFKA__EMBEDDED_PORT": str(free_port()), "RECO_SERVE__PORT": str(self.port),
            "RECO_SERVE__API_KEYS": json.dumps(keys), "RECO_SIM__API_KEY": SIM_KEY,
            "RECO_SERVE__SPLIT": "1.0" if name == "A" else "0.0",
            "RECO_SERVE__RELOAD_SECONDS": "2", "RECO_TRAIN__NDCG_TOLERANCE": "1.0",
            "RECO_ANALYTICS__WINDOW_MINUTES": str(args.duration / 60 + 0.5),
        }
        self.settings = Settings(var_dir=var, kafka={"embedded_port": int(
            self.env["RECO_KAFKA__EMBEDDED_PORT"])})
        self.broker = EmbeddedBroker(self.settings.kafka, self.settings.run_dir)
        self.ingest: subprocess.Popen | None = None

    def reco(self, *args: str, timeout: float = 900) -> str:
        out = subprocess.run([sys.executable, "-m", "backend.ops.cli", *args], env=self.env,
                             cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"reco {' '.join(args)} failed:\n{out.stderr[-3000:]}")
        return out.stdout

    def start(self) -> None:
        self.broker.start()
        ensure_topics(self.settings.kafka)
        log = open(self.settings.var_dir / "ingest.log", "ab")
        self.ingest = subprocess.Popen([sys.executable, "-m", "jobs.ingest"], env=self.env,
                                       cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.reco("bootstrap", "--wait", "600")
        self.reco("train")
        self.reco("serve", "start")

    def stop(self) -> None:
        subprocess.run([sys.executable, "-c", "import ray; from ray import serve; ray.init(); "
                        "serve.shutdown()"], env=self.env, cwd=ROOT, capture_output=True,
                       timeout=120)
        if self.ingest is not None:
            try:
                os.killpg(self.ingest.pid, signal.SIGTERM)
                self.ingest.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.ingest.pid, signal.SIGKILL)
        self.broker.stop()

    def served_version(self) -> str | None:
        health = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=10).json()
        return health["variants"][self.name]["version"]

    def cycle(self, i: int) -> dict:
        from backend.analytics.cycle import analyze_once

        lake = Lake.open(self.settings)
        before = lake.count("events.reco")
        summary = json.loads(self.reco("simulate", "--rps", str(self.args.rps), "--duration",
                                       str(self.args.duration), "--seed",
                                       str(self.args.seed + i)).strip().splitlines()[-1])
        deadline = time.monotonic() + 180
        while lake.count("events.reco") < before + summary["visits"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the lake did not catch up with the cycle's traffic")
            time.sleep(1)
        time.sleep(3)  # the cycle's last watches and ratings
        settings = Settings(var_dir=self.settings.var_dir, serve={"port": self.port},
                            analytics={"window_minutes": self.args.duration / 60 + 0.5})
        snap = analyze_once(settings)
        fair, tail = snap.fairness["all"], snap.tail["all"]
        served = self.served_version()
        train = self.reco("train")
        promoted = any(line.startswith(f"{self.name} ") and line.endswith("promoted")
                       for line in train.splitlines())
        deadline = time.monotonic() + 90
        while promoted and self.served_version() == served:
            if time.monotonic() > deadline:
                raise RuntimeError("the promoted version was not picked up")
            time.sleep(1)
        return {"cycle": i, "visits": summary["visits"], "model": served,
                "recommendations": snap.counts.recommendations,
                "gini": fair.gini, "top10_share": fair.top10_share,
                "coverage": fair.coverage, "head_tail_ratio": tail.head_tail_ratio,
                "tail_rate": tail.rates.tail,
                "homogenization": snap.echo.homogenization,
                "spam_flagged": len(snap.spam.flagged.combined),
                "retrain": train.strip().splitlines()}


def _slope(t) -> str:
    """A trend as "slope [low, high]", or why there is none."""
    if t.slope is None:
        return t.reason
    return f"{t.slope:+.4f} [{t.ci_low:+.4f}, {t.ci_high:+.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rps", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--arms", default="A,B")
    args = parser.parse_args()
    workdir = ROOT / "var" / "bench" / "feedback-run"
    ports = {"head_port": free_port(), "dashboard_port": free_port(),
             "client_port": free_port(), "dashboard_agent_port": free_port(),
             "metrics_export_port": free_port()}
    head = RayHead(Settings(var_dir=workdir / "ray", ray=ports | {"num_cpus": 4}, serve={
        "haproxy_metrics_port": free_port(), "haproxy_stats_port": free_port()}))
    head.start()
    results: dict[str, list[dict]] = {}
    try:
        for name in args.arms.split(","):
            arm = Arm(name, workdir, head, args)
            try:
                arm.start()
                results[name] = []
                for i in range(args.cycles):
                    row = arm.cycle(i)
                    results[name].append(row)
                    print(f"{name} cycle {i}: " + json.dumps(
                        {k: row[k] for k in ("visits", "model", "gini", "top10_share",
                                             "coverage", "head_tail_ratio")}), flush=True)
            finally:
                arm.stop()
    finally:
        head.stop()

    cols = ("gini", "top10_share", "coverage", "head_tail_ratio", "tail_rate",
            "homogenization")
    summary = {}
    for name, rows in results.items():
        print(f"\nModel {name} alone, {args.cycles} cycles of {args.duration:.0f} s at "
              f"{args.rps} visits/s")
        print(f"{'cycle':>6}{'model':>8}" + "".join(f"{c:>16}" for c in cols))
        for r in rows:
            print(f"{r['cycle']:>6}{r['model'] or '-':>8}" + "".join(
                f"{r[c]:>16.4f}" if r[c] is not None else f"{'-':>16}" for c in cols))
        g = trend([r["gini"] for r in rows])
        t = trend([r["top10_share"] for r in rows])
        summary[name] = {"gini_trend": g.as_dict(), "top10_trend": t.as_dict()}
        print(f"echo slope (Gini per cycle): {_slope(g)}  detected={g.detected};  "
              f"top-10 share: {_slope(t)}")
    out = ROOT / "var" / "bench" / "feedback.json"
    out.write_text(json.dumps({"args": vars(args), "cycles": results, "trends": summary},
                              indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
