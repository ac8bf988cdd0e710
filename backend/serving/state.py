"""State every ingress replica must share: the rate-limit buckets, the experiment (split and
salt), and the request metrics summed over replicas.

`ServingStateLogic` is plain Python (unit-tested with a fake clock); the `ServingState`
deployment in deployments.py runs exactly one of it. Replicas reach it rarely, never once per
request:
- rate limits by leases: a replica takes a few tokens of a client's bucket at a time
  (`acquire`) and spends them locally, so the total a client gets is the configured limit
  (plus at most one lease per replica in flight), not limit x replicas;
- metrics as deltas a replica pushes about once a second (`record`, see metrics.py);
- the experiment config, polled about once a second (`config`), changed by `set_config`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from backend.serving.metrics import Gauge, MetricsLogic, MetricsPayload
from backend.serving.ratelimit import RateLimiterLogic
from backend.serving.schemas import Knob, SharedExperiment, WritesHealth


class ServingStateLogic:
    """The one shared place: leases of rate-limit tokens, experiment config, metric sums."""

    def __init__(self, per_minute: float, overrides: dict[str, float], split: float,
                 salt: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = RateLimiterLogic(per_minute=per_minute, overrides=overrides, clock=clock)
        self.metrics = MetricsLogic(clock)
        self.experiment = SharedExperiment(split=split, salt=salt)
        self._deployed: tuple[float, str] = (split, salt)
        self._deployed_runtime: dict[str, Knob] = {}

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

    def record(self, payload: MetricsPayload) -> None:
        """A replica's pushed `MetricsDelta.as_payload()`."""
        self.metrics.merge(payload)

    def render(self, extra: list[Gauge] | None = None) -> str:
        """/metrics text; `extra`: (name, [(label, value), ...], value) gauges the scraping
        replica read just now (its variants' refused versions)."""
        return self.metrics.render({(n, tuple((str(k), str(v)) for k, v in ls)): float(x)
                                    for n, ls, x in (extra or [])})

    def writes_health(self) -> WritesHealth:
        return WritesHealth(
            spool_depth=int(sum(self.metrics.fresh_gauges("reco_spool_depth"))),
            degraded_replicas=int(sum(self.metrics.fresh_gauges("reco_broker_degraded"))))

    def lease_size(self, client: str) -> int:
        """Tokens handed out per lease: small against the limit, so that leases parked in
        idle replicas barely change what a client can get."""
        limit = self.limiter.overrides.get(client, self.limiter.per_minute)
        return max(1, min(50, int(limit // 100)))

    def config(self) -> SharedExperiment:
        return self.experiment

    def deployed(self, split: float, salt: str) -> SharedExperiment:
        """A replica reports its `user_config`. Only a config that differs from the last one
        deployed changes the experiment: a replica that merely (re)starts with the deployed
        config must not undo a change made since through the admin endpoint."""
        if (split, salt) != self._deployed:
            self._deployed = (split, salt)
            return self.set_config(split, salt)
        return self.config()

    def deployed_runtime(self, runtime: dict[str, Knob]) -> SharedExperiment:
        """Variant B reports its `user_config` runtime knobs; same rule as `deployed`."""
        if runtime != self._deployed_runtime:
            self._deployed_runtime = dict(runtime)
            return self.set_config(b_runtime=runtime)
        return self.config()

    def set_config(self, split: float | None = None, salt: str | None = None,
                   b_runtime: dict[str, Knob] | None = None) -> SharedExperiment:
        now = self.experiment
        self.experiment = SharedExperiment(
            split=now.split if split is None else float(split),
            salt=now.salt if salt is None else salt,
            b_runtime=now.b_runtime | dict(b_runtime or {}), generation=now.generation + 1)
        return self.experiment
