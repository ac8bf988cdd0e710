"""Request metrics: what one replica counts (`MetricsDelta`), their sums over every replica
(`MetricsLogic`, held by the ServingState deployment) and the Prometheus exposition of the sums
(`SummedCollector`, rendered by prometheus_client's `generate_latest`).

A replica counts into plain dicts and pushes them about once a second: prometheus_client's
own metric objects would take a lock per increment on the hot path, and the figures that
matter are the sums over replicas, which no single replica's registry holds.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from pydantic import BaseModel

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]  # (metric name, sorted label pairs)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY = ("reco_request_latency_seconds", "ingress latency of /recommend, by variant",
           ("variant",))
COUNTERS = {  # name -> (help, label names)
    "reco_requests_total": ("HTTP requests by route, status and variant",
                            ("route", "status", "variant")),
    "reco_rate_limited_total": ("requests refused with 429, by client kind", ("client",)),
    "reco_auth_failures_total": ("requests refused with 401 or 403", ("status",)),
    "reco_signin_failures_total": ("console sign-ins refused: 401 wrong name or password, "
                                   "429 account locked", ("status",)),
    "reco_kafka_produce_errors_total": ("events that waited in a write-ahead log for the broker "
                                        "instead of going to Kafka", ()),
    "reco_audit_failures_total": ("operator actions that took effect but whose audit record "
                                  "could not be written", ()),
}
GAUGES = {
    "reco_model_info": ("model version each variant served last (value 1)",
                        ("variant", "version")),
    "reco_spool_depth": ("events waiting in a replica's write-ahead log for the broker",
                         ("replica",)),
    "reco_broker_degraded": ("1 while a replica's events wait in its log instead of going to "
                             "Kafka", ("replica",)),
    "reco_wal_pending": ("accepted writes in a replica's write-ahead log that the lake does "
                         "not hold yet", ("replica",)),
    "reco_wal_bytes": ("bytes of a replica's write-ahead log on disk", ("replica",)),
    "reco_model_refused": ("versions a variant refused to load (failed verification)",
                           ("variant",)),
}
# forgotten when not refreshed
REPLICA_GAUGES = ("reco_spool_depth", "reco_broker_degraded", "reco_wal_pending", "reco_wal_bytes")


Pairs = list[tuple[str, str]]
Gauge = tuple[str, Pairs, float]  # name, labels, value


class MetricsPayload(BaseModel):
    """A pushed delta: (name, labels, value) counters and gauges, (labels, bucket counts,
    sum) latencies."""

    counters: list[tuple[str, Pairs, float]] = []
    latency: list[tuple[Pairs, list[float], float]] = []
    gauges: list[Gauge] = []


def _new_counts() -> list[float]:
    return [0.0] * (len(LATENCY_BUCKETS) + 1)


@dataclass
class MetricsDelta:
    """What one replica accumulated since its last push (plain dicts: cheap to send)."""

    counters: dict[SeriesKey, float] = field(default_factory=lambda: defaultdict(float))
    latency: dict[Labels, list[float]] = field(default_factory=dict)  # labels -> bucket counts
    latency_sum: dict[Labels, float] = field(default_factory=lambda: defaultdict(float))
    gauges: dict[SeriesKey, float] = field(default_factory=dict)

    def inc(self, name: str, labels: dict[str, str], n: float = 1.0) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += n

    def observe(self, seconds: float, labels: dict[str, str]) -> None:
        key = tuple(sorted(labels.items()))
        counts = self.latency.setdefault(key, _new_counts())
        i = next((j for j, b in enumerate(LATENCY_BUCKETS) if seconds <= b),
                 len(LATENCY_BUCKETS))
        counts[i] += 1
        self.latency_sum[key] += seconds

    def set(self, name: str, labels: dict[str, str], value: float) -> None:
        self.gauges[(name, tuple(sorted(labels.items())))] = value

    def empty(self) -> bool:
        return not (self.counters or self.latency or self.gauges)

    def as_payload(self) -> MetricsPayload:
        return MetricsPayload(
            counters=[(n, list(ls), v) for (n, ls), v in self.counters.items()],
            latency=[(list(ls), c, self.latency_sum[ls]) for ls, c in self.latency.items()],
            gauges=[(n, list(ls), v) for (n, ls), v in self.gauges.items()])


# This process's request metrics since the last push. Kept here, in an importable module, and
# reached through functions: Serve pickles the ingress FastAPI app (and its middleware) by
# value, so a module global of the app's module could exist twice in one replica.
_current = MetricsDelta()


def replica_delta() -> MetricsDelta:
    return _current


def take_replica_delta() -> MetricsDelta:
    """The delta so far, replaced by an empty one (what a push sends)."""
    global _current
    delta, _current = _current, MetricsDelta()
    return delta


def _labels(pairs: Pairs) -> Labels:
    return tuple((str(k), str(v)) for k, v in pairs)


class MetricsLogic:
    """Sums the replicas' deltas; renders them through prometheus_client.

    Per-replica gauges expire `ttl` seconds after their last push, so a replica that is gone
    (its log adopted by another) stops counting."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = 10.0) -> None:
        self.counters: dict[SeriesKey, float] = defaultdict(float)
        self.latency: dict[Labels, list[float]] = {}
        self.latency_sum: dict[Labels, float] = defaultdict(float)
        self.gauges: dict[SeriesKey, float] = {}
        self.stamps: dict[SeriesKey, float] = {}
        self.clock = clock
        self.ttl = ttl

    def fresh_gauges(self, name: str) -> list[float]:
        now = self.clock()
        return [v for k, v in self.gauges.items()
                if k[0] == name and now - self.stamps.get(k, now) <= self.ttl]

    def live_gauges(self) -> dict[SeriesKey, float]:
        """Every gauge, less the per-replica ones of replicas that stopped pushing."""
        now = self.clock()
        return {k: v for k, v in self.gauges.items() if k[0] not in REPLICA_GAUGES
                or now - self.stamps.get(k, now) <= self.ttl}

    def merge(self, payload: MetricsPayload) -> None:
        for name, labels, v in payload.counters:
            self.counters[(name, _labels(labels))] += v
        for labels, counts, total in payload.latency:
            series = _labels(labels)
            mine = self.latency.setdefault(series, _new_counts())
            for i, c in enumerate(counts):
                mine[i] += c
            self.latency_sum[series] += total
        for name, labels, v in payload.gauges:
            key = (name, _labels(labels))
            if name == "reco_model_info":  # one version per variant: drop the old one
                variant = dict(key[1]).get("variant")
                for old in [k for k in self.gauges if k[0] == name
                            and dict(k[1]).get("variant") == variant]:
                    del self.gauges[old]
            self.gauges[key] = v
            self.stamps[key] = self.clock()

    def render(self, extra_gauges: Mapping[SeriesKey, float] | None = None) -> str:
        """Prometheus text exposition (format 0.0.4) of the sums and `extra_gauges`."""
        registry = CollectorRegistry()
        registry.register(SummedCollector(self, extra_gauges or {}))
        return generate_latest(registry).decode()


class SummedCollector:
    """A prometheus_client custom collector over a `MetricsLogic`'s sums (one scrape's worth:
    `extra_gauges` are figures the scraping replica read just now)."""

    def __init__(self, metrics: MetricsLogic, extra_gauges: Mapping[SeriesKey, float]) -> None:
        self.metrics = metrics
        self.extra_gauges = extra_gauges

    def describe(self) -> list[Metric]:
        """The families without samples (what the registry checks for name clashes)."""
        return [*(CounterMetricFamily(n, h, labels=ls) for n, (h, ls) in COUNTERS.items()),
                HistogramMetricFamily(LATENCY[0], LATENCY[1], labels=LATENCY[2]),
                *(GaugeMetricFamily(n, h, labels=ls) for n, (h, ls) in GAUGES.items())]

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        for name, (help_, names) in COUNTERS.items():
            counter = CounterMetricFamily(name, help_, labels=names)
            for (n, ls), v in sorted(m.counters.items()):
                if n == name:
                    counter.add_metric(_values(names, ls), v)
            yield counter
        histogram = HistogramMetricFamily(LATENCY[0], LATENCY[1], labels=LATENCY[2])
        bounds = [f"{b:g}" for b in LATENCY_BUCKETS] + ["+Inf"]
        for labels, counts in sorted(m.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, c in zip(bounds, counts, strict=True):
                cumulative += c
                buckets.append((bound, cumulative))
            histogram.add_metric(_values(LATENCY[2], labels), buckets, m.latency_sum[labels])
        yield histogram
        gauges = m.live_gauges() | dict(self.extra_gauges)
        for name, (help_, names) in GAUGES.items():
            gauge = GaugeMetricFamily(name, help_, labels=names)
            for (n, ls), v in sorted(gauges.items()):
                if n == name:
                    gauge.add_metric(_values(names, ls), v)
            yield gauge


def _values(names: tuple[str, ...], labels: Labels) -> list[str]:
    """Label values in the family's label-name order (a missing label is empty, as
    Prometheus reads an absent label)."""
    given = dict(labels)
    return [given.get(n, "") for n in names]

