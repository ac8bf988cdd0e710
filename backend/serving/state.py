"""State every ingress replica must share: the rate-limit buckets, the experiment (split and
salt), and the request metrics summed over replicas.

`ServingStateLogic` is plain Python (unit-tested with a fake clock); the `ServingState`
deployment in app.py runs exactly one of it. Replicas reach it rarely, never once per request:
- rate limits by leases: a replica takes a few tokens of a client's bucket at a time
  (`acquire`) and spends them locally, so the total a client gets is the configured limit
  (plus at most one lease per replica in flight), not limit x replicas;
- metrics as deltas a replica pushes about once a second (`record`);
- the experiment config, polled about once a second (`config`), changed by `set_config`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend.serving.ratelimit import RateLimiterLogic

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

COUNTERS = {
    "reco_requests_total": "HTTP requests by route, status and variant",
    "reco_rate_limited_total": "requests refused with 429, by client kind",
    "reco_auth_failures_total": "requests refused with 401 or 403",
    "reco_kafka_produce_errors_total": "events that went to the spool instead of Kafka",
}
GAUGES = {
    "reco_model_info": "model version each variant served last (value 1)",
    "reco_spool_depth": "events waiting in the ingress spool, per replica",
    "reco_broker_degraded": "1 while a replica sends to its spool instead of Kafka",
    "reco_model_refused": "versions a variant refused to load (failed verification)",
}


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class MetricsDelta:
    """What one replica accumulated since its last push (plain dicts: cheap to send)."""

    counters: dict[tuple[str, tuple], float] = field(default_factory=lambda: defaultdict(float))
    latency: dict[tuple, list[float]] = field(default_factory=dict)  # labels -> bucket counts
    latency_sum: dict[tuple, float] = field(default_factory=lambda: defaultdict(float))
    gauges: dict[tuple[str, tuple], float] = field(default_factory=dict)

    def inc(self, name: str, labels: dict[str, str], n: float = 1.0) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += n

    def observe(self, seconds: float, labels: dict[str, str]) -> None:
        key = tuple(sorted(labels.items()))
        counts = self.latency.setdefault(key, [0.0] * (len(LATENCY_BUCKETS) + 1))
        i = next((j for j, b in enumerate(LATENCY_BUCKETS) if seconds <= b),
                 len(LATENCY_BUCKETS))
        counts[i] += 1
        self.latency_sum[key] += seconds

    def set(self, name: str, labels: dict[str, str], value: float) -> None:
        self.gauges[(name, tuple(sorted(labels.items())))] = value

    def empty(self) -> bool:
        return not (self.counters or self.latency or self.gauges)

    def as_payload(self) -> dict[str, Any]:
        return {"counters": [[n, list(map(list, ls)), v] for (n, ls), v in self.counters.items()],
                "latency": [[list(map(list, ls)), c, self.latency_sum[ls]]
                            for ls, c in self.latency.items()],
                "gauges": [[n, list(map(list, ls)), v] for (n, ls), v in self.gauges.items()]}


# This process's request metrics since the last push. Kept here, in an importable module, and
# reached through functions: Serve pickles the ingress FastAPI app (and its middleware) by
# value, so a module global of app.py could exist twice in one replica.
_current = MetricsDelta()


def replica_delta() -> MetricsDelta:
    return _current


def take_replica_delta() -> MetricsDelta:
    """The delta so far, replaced by an empty one (what a push sends)."""
    global _current
    delta, _current = _current, MetricsDelta()
    return delta


REPLICA_GAUGES = ("reco_spool_depth", "reco_broker_degraded")  # forgotten when not refreshed


class MetricsLogic:
    """Sums the replicas' deltas; renders Prometheus text exposition format 0.0.4.

    Per-replica gauges expire `ttl` seconds after their last push, so a replica that is gone
    (its spool adopted by another) stops counting."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = 10.0) -> None:
        self.counters: dict[tuple[str, tuple], float] = defaultdict(float)
        self.latency: dict[tuple, list[float]] = {}
        self.latency_sum: dict[tuple, float] = defaultdict(float)
        self.gauges: dict[tuple[str, tuple], float] = {}
        self.stamps: dict[tuple[str, tuple], float] = {}
        self.clock = clock
        self.ttl = ttl

    def fresh_gauges(self, name: str) -> list[float]:
        now = self.clock()
        return [v for k, v in self.gauges.items()
                if k[0] == name and now - self.stamps.get(k, now) <= self.ttl]

    def merge(self, payload: dict[str, Any]) -> None:
        for name, labels, v in payload.get("counters", []):
            self.counters[(name, tuple(map(tuple, labels)))] += v
        for labels, counts, total in payload.get("latency", []):
            key = tuple(map(tuple, labels))
            mine = self.latency.setdefault(key, [0.0] * (len(LATENCY_BUCKETS) + 1))
            for i, c in enumerate(counts):
                mine[i] += c
            self.latency_sum[key] += total
        for name, labels, v in payload.get("gauges", []):
            key = (name, tuple(map(tuple, labels)))
            if name == "reco_model_info":  # one version per variant: drop the old one
                variant = dict(key[1]).get("variant")
                for old in [k for k in self.gauges if k[0] == name
                            and dict(k[1]).get("variant") == variant]:
                    del self.gauges[old]
            self.gauges[key] = v
            self.stamps[key] = self.clock()

    def render(self, extra_gauges: dict[tuple[str, tuple], float] | None = None) -> str:
        lines: list[str] = []
        for name, help_ in COUNTERS.items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
            lines += [f"{name}{_labels(ls)} {v:g}" for (n, ls), v in sorted(self.counters.items())
                      if n == name]
        name = "reco_request_latency_seconds"
        lines += [f"# HELP {name} ingress latency of /recommend, by variant",
                  f"# TYPE {name} histogram"]
        for ls, counts in sorted(self.latency.items()):
            cumulative = 0.0
            for bound, c in zip([*LATENCY_BUCKETS, math.inf], counts, strict=True):
                cumulative += c
                le = "+Inf" if bound == math.inf else f"{bound:g}"
                lines.append(f"{name}_bucket{_labels((*ls, ('le', le)))} {cumulative:g}")
            lines.append(f"{name}_sum{_labels(ls)} {self.latency_sum[ls]:.6f}")
            lines.append(f"{name}_count{_labels(ls)} {cumulative:g}")
        now = self.clock()
        gauges = {k: v for k, v in self.gauges.items() if k[0] not in REPLICA_GAUGES
                  or now - self.stamps.get(k, now) <= self.ttl} | (extra_gauges or {})
        for name, help_ in GAUGES.items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
            lines += [f"{name}{_labels(ls)} {v:g}" for (n, ls), v in sorted(gauges.items())
                      if n == name]
        return "\n".join(lines) + "\n"


class ServingStateLogic:
    """The one shared place: leases of rate-limit tokens, experiment config, metric sums."""

    def __init__(self, per_minute: float, overrides: dict[str, float], split: float,
                 salt: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = RateLimiterLogic(per_minute=per_minute, overrides=overrides, clock=clock)
        self.metrics = MetricsLogic(clock)
        self.experiment: dict[str, Any] = {"split": split, "salt": salt, "b_runtime": {},
                                           "generation": 0}
        self._deployed: dict[str, Any] = {"split": split, "salt": salt}
        self._deployed_runtime: dict[str, Any] = {}

    def acquire(self, client: str) -> tuple[int, int]:
        """A lease of up to `lease_size` tokens of `client`'s bucket: (granted, Retry-After
        seconds when nothing was granted)."""
        granted, retry = 0, 0
        for _ in range(self.lease_size(client)):
            ok, retry = self.limiter.check(client)
            if not ok:
                break
            granted += 1
        return granted, (0 if granted else retry)

    def writes_health(self) -> dict[str, Any]:
        """Spool depth and degraded replicas summed over the live ingress replicas."""
        return {"spool_depth": int(sum(self.metrics.fresh_gauges("reco_spool_depth"))),
                "degraded_replicas": int(sum(self.metrics.fresh_gauges("reco_broker_degraded")))}

    def lease_size(self, client: str) -> int:
        """Tokens handed out per lease: small against the limit, so that leases parked in
        idle replicas barely change what a client can get."""
        limit = self.limiter.overrides.get(client, self.limiter.per_minute)
        return max(1, min(50, int(limit // 100)))

    def config(self) -> dict[str, Any]:
        return {**self.experiment, "b_runtime": dict(self.experiment["b_runtime"])}

    def deployed(self, split: float, salt: str) -> dict[str, Any]:
        """A replica reports its `user_config`. Only a config that differs from the last one
        deployed changes the experiment: a replica that merely (re)starts with the deployed
        config must not undo a change made since through the admin endpoint."""
        if {"split": split, "salt": salt} != self._deployed:
            self._deployed = {"split": split, "salt": salt}
            return self.set_config(split, salt)
        return self.config()

    def deployed_runtime(self, runtime: dict[str, Any]) -> dict[str, Any]:
        """Variant B reports its `user_config` runtime knobs; same rule as `deployed`."""
        if runtime != self._deployed_runtime:
            self._deployed_runtime = dict(runtime)
            return self.set_config(b_runtime=runtime)
        return self.config()

    def set_config(self, split: float | None = None, salt: str | None = None,
                   b_runtime: dict[str, Any] | None = None) -> dict[str, Any]:
        if split is not None:
            self.experiment["split"] = float(split)
        if salt is not None:
            self.experiment["salt"] = salt
        if b_runtime:
            self.experiment["b_runtime"] = self.experiment["b_runtime"] | dict(b_runtime)
        self.experiment["generation"] += 1
        return self.config()
