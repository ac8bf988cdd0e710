"""The Serve deployments: each wires one Ray-free logic class to Serve (handles, replica ids,
background loops, `user_config`) and holds nothing else.

Records cross deployments as plain dicts (`model_dump()` on the way out, `model_validate` on
the way in, here), so the logic classes see only the typed models of schemas.py.

- `VariantDeployment` -> `VariantLogic` (variant.py): one model variant, hot-swapped;
- `ServingState` -> `ServingStateLogic` (state.py): exactly one; leases, experiment, metrics;
- `RecoLogDeployment` -> `RecoLogLogic` (recolog.py): produces the reco log;
- `Ingress` -> `IngressLogic` (ingress.py), serving the FastAPI app of api.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle

from backend.core.settings import Settings
from backend.data.deadletters import DeadLetters
from backend.data.kafka import EventProducer
from backend.data.lake import Lake, LandedIds
from backend.data.wal import WriteAheadLog
from backend.serving import api as http
from backend.serving.ingress import IngressLogic, SharedState, VariantCalls, load_titles
from backend.serving.metrics import Gauge, MetricsPayload
from backend.serving.recolog import PUSH_SECONDS, RecoLogLogic
from backend.serving.router import allocation_of
from backend.serving.schemas import (
    Allocation,
    Knob,
    SharedExperiment,
    VariantAnswer,
    VariantStatus,
    WritesHealth,
)
from backend.serving.sessions import open_sessions
from backend.serving.state import ServingStateLogic
from backend.serving.variant import VariantLogic
from registry import open_experiments, open_quarantine, open_registry

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def _typed(model: type[M], call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[M]]:
    """A handle method whose dict answer is validated into `model`."""
    async def typed(*args: Any) -> M:
        return model.model_validate(await call(*args))
    return typed


def _pushing(call: Callable[[dict[str, Any]], Awaitable[Any]]
             ) -> Callable[[MetricsPayload], Awaitable[None]]:
    """A handle's `record`, sent the payload as a plain dict."""
    async def push(payload: MetricsPayload) -> None:
        await call(payload.model_dump())
    return push


def _allocating(call: Callable[[dict[str, Any] | None, int], Awaitable[Any]]
                ) -> Callable[[Allocation | None, int], Awaitable[SharedExperiment]]:
    """A handle's `set_allocation`, sent the allocation as a plain dict."""
    async def allocate(allocation: Allocation | None, revision: int) -> SharedExperiment:
        wire = None if allocation is None else allocation.model_dump()
        return SharedExperiment.model_validate(await call(wire, revision))
    return allocate


def _replica_id() -> str:
    """This replica's id (its write-ahead log's name); Serve's local testing mode, which runs every
    deployment in the calling process, has no replica context: a unique one then."""
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except RayServeException:
        return f"local-{uuid.uuid4().hex[:8]}"


@serve.deployment(name="Variant", num_replicas=1, ray_actor_options={"num_cpus": 0.25})
class VariantDeployment:
    def __init__(self, settings: Settings, variant: str,
                 state: DeploymentHandle[Any] | None = None) -> None:
        self.logic = VariantLogic(open_registry(settings), variant,
                                  settings.serve.answer_temperature)
        self.state = state  # variant B: follows the shared run-time knobs
        self._follower: asyncio.Task[None] | None = None
        self._period = settings.serve.reload_seconds
        threading.Thread(target=self._reload_loop, daemon=True).start()

    def _reload_loop(self) -> None:
        while True:
            time.sleep(self._period)
            try:
                self.logic.reload()
            except Exception:  # keep serving the current version whatever the reload hit
                log.exception("reload failed variant=%s", self.logic.variant)

    async def _follow(self, state: DeploymentHandle[Any]) -> None:
        """Apply the shared run-time knobs (admin endpoint or a new user_config) within a
        second, on every replica of this variant."""
        while True:
            await asyncio.sleep(PUSH_SECONDS)
            try:
                self.logic.follow(SharedExperiment.model_validate(await state.config.remote()))
            except Exception:  # the state replica restarting: next period
                log.warning("reading the shared knobs failed", exc_info=True)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """`user_config` (called at start and on every change): applied here, and shared so
        that every replica of the variant applies it; starts following the shared knobs."""
        runtime = config.get("runtime", {})
        self.logic.configure(runtime)
        if self.state is None:
            return
        if runtime:
            await self.state.deployed_runtime.remote(runtime)
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow(self.state))

    # async: Serve runs a sync method in a worker thread, and the hand-off (and the threads
    # anyio starts) cost the replica several times the model's 0.2-0.4 ms
    async def recommend_batch(self, requests: list[tuple[int, int]]) -> list[VariantAnswer]:
        return self.logic.recommend_batch(requests)  # TypedDicts: plain dicts already

    async def status(self) -> dict[str, Any]:
        return self.logic.status().model_dump()


@serve.deployment(name="ServingState", num_replicas=1, max_ongoing_requests=1000,
                  ray_actor_options={"num_cpus": 0.1})
class ServingState:
    """Exactly one: rate-limit leases, the experiment, metric sums (see state.py). Methods
    are async so they run on the replica's loop, not in a worker thread."""

    def __init__(self, settings: Settings) -> None:
        cfg = settings.serve
        running = open_experiments(settings).running()  # the store wins over the defaults
        self.logic = ServingStateLogic(
            cfg.per_minute, {f"key:{n}": k.per_minute for n, k in cfg.api_keys.items()
                             if k.per_minute}, cfg.split, cfg.salt,
            variants=list(settings.variants), running=allocation_of(running) if running else None)

    async def acquire(self, client: str) -> tuple[int, int]:
        return self.logic.acquire(client)

    async def record(self, payload: dict[str, Any]) -> None:
        self.logic.record(MetricsPayload.model_validate(payload))

    async def render(self, extra: list[Gauge] | None = None) -> str:
        return self.logic.render(extra)

    async def config(self) -> dict[str, Any]:
        return self.logic.config().model_dump()

    async def writes_health(self) -> dict[str, Any]:
        return self.logic.writes_health().model_dump()

    async def deployed(self, split: float, salt: str) -> dict[str, Any]:
        return self.logic.deployed(split, salt).model_dump()

    async def set_config(self, split: float | None, salt: str | None,
                         b_runtime: dict[str, Knob] | None = None) -> dict[str, Any]:
        return self.logic.set_config(split, salt, b_runtime).model_dump()

    async def deployed_runtime(self, runtime: dict[str, Knob]) -> dict[str, Any]:
        return self.logic.deployed_runtime(runtime).model_dump()

    async def set_allocation(self, allocation: dict[str, Any] | None, revision: int
                             ) -> dict[str, Any]:
        return self.logic.set_allocation(
            None if allocation is None else Allocation.model_validate(allocation),
            revision).model_dump()


@serve.deployment(name="RecoLog", num_replicas=1, max_ongoing_requests=64,
                  ray_actor_options={"num_cpus": 0.1})
class RecoLogDeployment:
    """Produces the ingress replicas' reco log to events.reco, batches at a time (see
    recolog.py), with its own write-ahead log for when the broker is away (records wait
    there until the broker takes them; the reco log is not an accepted write)."""

    def __init__(self, settings: Settings, state: DeploymentHandle[Any]) -> None:
        replica = _replica_id()
        wal = WriteAheadLog.claim(settings.wal_dir / "recolog", replica,
                                  settings.wal.max_bytes, settings.wal.segment_bytes)
        # a produce request per batch, not per record
        kafka = settings.kafka.model_copy(update={"linger_ms": settings.serve.log_linger_ms})
        self.logic = RecoLogLogic(
            EventProducer(kafka, wal, adopt_interval=settings.wal.adopt_seconds), replica,
            _pushing(state.record.remote))

    async def write(self, records: list[dict[str, Any]]) -> int:
        return self.logic.write(records)

    async def check_health(self) -> None:  # Serve calls it every few seconds
        self.logic.start()

    async def __del__(self) -> None:
        self.logic.close()


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.25})
@serve.ingress(http.api)
class Ingress:
    """The HTTP ingress: api.py's routes and hot path answer through `self.logic`."""

    def __init__(self, settings: Settings, variants: dict[str, DeploymentHandle[Any]],
                 state: DeploymentHandle[Any], reco_log: DeploymentHandle[Any]) -> None:
        """`variants`: a handle per variant, in the settings' order."""
        replica = _replica_id()
        cfg = settings.wal
        # accepted writes: fsynced here before the 202, until the lake holds them; the logs
        # of gone replicas on this node (killed ones) are adopted and replayed
        wal = WriteAheadLog.claim(settings.wal_dir / "ingress", replica, cfg.max_bytes,
                                  cfg.segment_bytes, cfg.resend_seconds)
        writes = EventProducer(settings.kafka, wal, landed=LandedIds(Lake.open(settings)),
                               landed_interval=cfg.landed_seconds,
                               adopt_interval=cfg.adopt_seconds)
        calls = {v: VariantCalls(h.recommend_batch.remote, _typed(VariantStatus, h.status.remote))
                 for v, h in variants.items()}
        shared = SharedState(
            acquire=state.acquire.remote, record=_pushing(state.record.remote),
            config=_typed(SharedExperiment, state.config.remote),
            deployed=_typed(SharedExperiment, state.deployed.remote),
            set_config=_typed(SharedExperiment, state.set_config.remote),
            set_allocation=_allocating(state.set_allocation.remote),
            writes_health=_typed(WritesHealth, state.writes_health.remote),
            render=state.render.remote)
        self.logic = IngressLogic(
            settings.serve, calls, shared, reco_log.write.remote,
            writes,  # accepted writes; the reco log's fallback
            replica, functools.partial(open_registry, settings), open_experiments(settings),
            quarantine=open_quarantine(settings), sessions=open_sessions(settings),
            dead_letters=DeadLetters(Lake.open(settings)),
            request_store=settings.shared_store(),
            titles=load_titles(settings.data_cache),
            retry_on=(RayActorError,))
        http.answer_with(self.logic)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        await self.logic.reconfigure(config)

    async def check_health(self) -> None:  # Serve calls it every few seconds
        self.logic.start()

    async def __del__(self) -> None:
        await self.logic.close()
