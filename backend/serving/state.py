"""State every ingress replica must share: the rate-limit buckets, the allocation (the running
experiment's arms and weights, or the default split), and the request metrics summed over
replicas.

`ServingStateLogic` is plain Python (unit-tested with a fake clock); the `ServingState`
deployment in deployments.py runs exactly one of it. Replicas reach it rarely, never once per
request:
- rate limits by leases: a replica takes a few tokens of a client's bucket at a time
  (`acquire`) and spends them locally, so the total a client gets is the configured limit
  (plus at most one lease per replica in flight), not limit x replicas;
- metrics as deltas a replica pushes about once a second (`record`, see metrics.py);
- the experiment config, polled about once a second (`config`), changed by `set_config`
  (the default split, the knobs) and `set_allocation` (an experiment started, re-weighted,
  grown or stopped: the experiment store records it first, see registry/experiments.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from backend.serving.metrics import Gauge, MetricsLogic, MetricsPayload
from backend.serving.ratelimit import RateLimiterLogic
from backend.serving.router import default_allocation
from backend.serving.schemas import Allocation, Knob, SharedExperiment, WritesHealth


class ServingStateLogic:
    """The one shared place: leases of rate-limit tokens, experiment config, metric sums."""

    def __init__(self, per_minute: float, overrides: dict[str, float], split: float,
                 salt: str, *, variants: Sequence[str], running: Allocation | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`variants`: the deployed ones, in order (the default allocation's first two
        split the users); `running`: the allocation of the experiment running as this
        replica starts (the store's), which wins over the default until it stops."""
        self.limiter = RateLimiterLogic(per_minute=per_minute, overrides=overrides, clock=clock)
        self.metrics = MetricsLogic(clock)
        self.variants = list(variants)
        default = default_allocation(self.variants, split, salt)
        self.experiment = SharedExperiment(allocation=running or default, default=default)
        self._revision = running.revision if running is not None else -1
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
            degraded_replicas=int(sum(self.metrics.fresh_gauges("reco_broker_degraded"))),
            wal_pending=int(sum(self.metrics.fresh_gauges("reco_wal_pending"))))

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
        """The default allocation's split and salt (in force while no experiment runs) and
        the run-time knobs."""
        now = self.experiment
        old = now.default
        default = old
        if split is not None or salt is not None:
            share = old.split if old.split is not None else 1.0  # one variant: it serves all
            default = default_allocation(self.variants, share if split is None else float(split),
                                         old.salt if salt is None else salt)
        running = now.allocation.experiment is not None
        return self._changed(allocation=now.allocation if running else default,
                             default=default, b_runtime=now.b_runtime | dict(b_runtime or {}))

    def set_allocation(self, allocation: Allocation | None, revision: int) -> SharedExperiment:
        """A running experiment's allocation (None: it stopped, back to the default), as of
        the audit log's line `revision`. Two admin calls on two replicas may hand theirs
        over in the other order than the store recorded them: an older one changes
        nothing."""
        if revision <= self._revision:
            return self.experiment
        self._revision = revision
        return self._changed(allocation=allocation or self.experiment.default)

    def _changed(self, **update: object) -> SharedExperiment:
        now = self.experiment
        self.experiment = now.model_copy(update=update | {"generation": now.generation + 1})
        return self.experiment
