"""What the ingress does with a request, without Ray: guard, route, coalesce, log.

`IngressLogic` authenticates, authorises and rate-limits (`guard`), assigns the user's variant
(`RouterLogic`, sticky), coalesces concurrent requests into one call per variant
(`Coalescer`), logs every recommendation (`LogShipper`, its own producer the fallback) and
counts into the replica's metric delta, pushed to the shared state about once a second. What
it calls is injected: the variants' and the shared state's methods (a Serve handle's
`.remote`s in the `Ingress` deployment, plain coroutines in unit tests), the producer and the
registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from backend.core.errors import RecoError
from backend.core.requests import RetrainRequest, request_retrain
from backend.core.settings import ServeSettings
from backend.core.store import Store
from backend.data.deadletters import DeadLetterCounts, DeadLetters
from backend.data.events import RatingEvent, RecoEvent, WatchEvent
from backend.data.movielens import load
from backend.serving.auth import ApiKeys, Principal
from backend.serving.coalesce import Coalescer
from backend.serving.leases import Leases
from backend.serving.metrics import Gauge, MetricsPayload, replica_delta, take_replica_delta
from backend.serving.recolog import PUSH_SECONDS, LogShipper, Producer, ProducerGauges, Record
from backend.serving.router import RouterLogic, allocation_of, default_allocation
from backend.serving.schemas import (
    Accepted,
    AliasesResponse,
    Allocation,
    AnsweredRequest,
    DeadLetterFilter,
    ExperimentsResponse,
    ExperimentView,
    HealthResponse,
    Knob,
    ModelsResponse,
    RecommendedItem,
    RecommendResponse,
    Replayed,
    RetrainRequested,
    RuntimeKnobs,
    SharedExperiment,
    SignedIn,
    SplitResponse,
    VariantAnswer,
    VariantStatus,
    VariantVersions,
    WritesHealth,
)
from backend.serving.sessions import Sessions
from registry import Registry
from registry.experiments import (
    ArmSpec,
    Experiment,
    ExperimentError,
    ExperimentSpec,
    ExperimentStore,
    OperatorAction,
)
from registry.quarantine import Quarantine, QuarantineEntry, QuarantineStore

log = logging.getLogger(__name__)
MAX_BODY = 16 * 1024
Batch = list[tuple[int, int]]  # (user_id, k) per request
Audit = Callable[[OperatorAction, str, dict[str, JsonValue]], object]  # ExperimentStore.record


@dataclass(frozen=True)
class VariantCalls:
    """A variant deployment's methods (see `VariantDeployment`)."""

    recommend_batch: Callable[[Batch], Awaitable[list[VariantAnswer]]]
    status: Callable[[], Awaitable[VariantStatus]]


@dataclass(frozen=True)
class SharedState:
    """The ServingState deployment's methods the ingress calls (see `ServingStateLogic`)."""

    acquire: Callable[[str], Awaitable[tuple[int, int]]]
    record: Callable[[MetricsPayload], Awaitable[None]]
    config: Callable[[], Awaitable[SharedExperiment]]
    deployed: Callable[[float, str], Awaitable[SharedExperiment]]
    set_config: Callable[[float | None, str | None, dict[str, Knob] | None],
                         Awaitable[SharedExperiment]]
    set_allocation: Callable[[Allocation | None, int], Awaitable[SharedExperiment]]
    writes_health: Callable[[], Awaitable[WritesHealth]]
    render: Callable[[list[Gauge]], Awaitable[str]]


def load_titles(data_cache: Path) -> dict[int, str]:
    """Item titles from the MovieLens cache; none without one (answers carry no titles
    rather than not coming at all)."""
    try:
        items = load(data_cache).items
        return dict(zip(items["item_id"].tolist(), items["title"].tolist(), strict=True))
    except Exception:
        log.warning("MovieLens items unavailable; recommendations carry no titles")
        return {}


class IngressLogic:
    def __init__(self, cfg: ServeSettings, variants: Mapping[str, VariantCalls],
                 state: SharedState, ship: Callable[[list[Record]], Awaitable[Any]],
                 producer: Producer, replica: str, registry: Callable[[], Registry],
                 experiments: ExperimentStore, audit: Audit | None = None,
                 quarantine: QuarantineStore | None = None,
                 sessions: Sessions | None = None,
                 dead_letters: DeadLetters | None = None,
                 request_store: Store | None = None,
                 titles: Mapping[int, str] | None = None,
                 retry_on: tuple[type[BaseException], ...] = (),
                 period: float = PUSH_SECONDS) -> None:
        """`ship`: hands a batch of reco-log records to the RecoLog deployment; `producer`:
        this replica's own (the writes, and the reco log's fallback); `experiments`: the
        store of experiments and the operators' audit trail (`audit`: its `record`, unless
        given); `quarantine`: the spam quarantine operators review; `sessions`: console
        sign-in and its bearer tokens (none: API keys only); `dead_letters`: the lake's
        DLQ, to count and replay; `request_store`: the shared store where a "retrain now"
        waits for the scheduler; `retry_on`: errors after
        which a variant call is made once more (a replica lost mid-call: Serve routes the
        retry to a live one)."""
        self.variants = dict(variants)
        self.state = state
        self.producer = producer
        self.registry = registry
        self.experiments = experiments
        self.audit = audit or experiments.record
        self.quarantine = quarantine
        self.sessions = sessions
        self.dead_letters = dead_letters
        self.request_store = request_store
        self.titles = dict(titles or {})
        self.retry_on = retry_on
        self.period = period
        self.router = RouterLogic(default_allocation(list(self.variants), cfg.split, cfg.salt))
        self.keys = ApiKeys({n: (k.sha256, k.role) for n, k in cfg.api_keys.items()})
        self.leases = Leases(state.acquire)
        self.batches: dict[str, Coalescer[tuple[int, int], VariantAnswer]] = {
            v: Coalescer(functools.partial(self.call_variant, v),
                                     cfg.coalesce_inflight, cfg.coalesce_max_batch)
                        for v in self.variants}
        self.reco_log = LogShipper(ship, functools.partial(producer.send, "events.reco"),
                                   interval=cfg.log_linger_ms / 1000)
        self.gauges = ProducerGauges(producer, replica)
        self.generation = -1  # of the shared experiment config applied here
        self._pusher: asyncio.Task[None] | None = None
        self._closed = False

    # -- the experiment ------------------------------------------------------------------

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """A deployed `user_config`: applied here now, and through the shared state on every
        replica within a push period (unless it is the config already deployed)."""
        split, salt = float(config.get("split", 0.5)), str(config.get("salt", "exp-1"))
        if not 0.0 <= split <= 1.0 or not salt:
            raise ValueError(f"split must be within [0, 1] and salt non-empty: {config}")
        self.generation = -1  # the shared config wins over this one unless this one is new
        self.apply(await self.state.deployed(split, salt))
        self.start()

    def apply(self, shared: SharedExperiment) -> None:
        """The shared experiment config, if it changed since it was last applied here. An
        allocation that gives users to a variant this replica cannot call (a redeploy
        dropped it while its experiment ran) is not followed: the default one is, and the
        reco log then names no experiment."""
        if shared.generation != self.generation:
            alloc = shared.allocation
            missing = [v for v, w in alloc.weights.items() if w > 0 and v not in self.variants]
            if missing:
                log.error("allocation names undeployed variants experiment=%s missing=%s "
                          "serving=default", alloc.experiment, missing)
                alloc = shared.default
            self.router.follow(alloc)
            self.generation = shared.generation

    def start(self) -> None:
        """Start pushing (on the running loop), once: from the deployed config and Serve's
        health checks, so a replica that has not served yet still follows split changes."""
        if self._pusher is None and not self._closed:
            self._pusher = asyncio.get_running_loop().create_task(self._push_loop())

    async def push(self) -> None:
        """Push this replica's metric delta; pick up experiment changes."""
        self.gauges.push()
        delta = take_replica_delta()
        if not delta.empty():
            await self.state.record(delta.as_payload())
        self.apply(await self.state.config())

    async def _push_loop(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.push()
            except Exception:  # the state replica restarting: try again next period
                log.warning("push to the serving state failed", exc_info=True)

    async def close(self) -> None:
        """Shutting down: the reco log still queued leaves, and the producer drains."""
        self._closed = True
        if self._pusher is not None:  # on its own loop: Serve's local testing mode runs
            # reconfigure and health checks on another thread's loop than requests
            with contextlib.suppress(RuntimeError):  # that loop is closed already
                self._pusher.get_loop().call_soon_threadsafe(self._pusher.cancel)
            self._pusher = None
        await self.reco_log.close()
        self.producer.close(timeout=5)

    # -- guard ---------------------------------------------------------------------------

    async def guard(self, presented: str | None, host: str | None, length: int,
                    needs: str | None, bearer: str | None = None) -> Principal | None:
        """Authenticate (an API key, or a console session's bearer token), authorise and
        rate-limit; raises RecoError with the HTTP status. `needs`: the role the operation
        needs (None: anyone, rate-limited by address)."""
        self.start()
        if length > MAX_BODY:
            raise RecoError(f"body of {length} bytes exceeds {MAX_BODY}", status_code=413)
        principal = self.keys.authenticate(presented)
        if principal is None and bearer and self.sessions is not None:
            principal = await asyncio.to_thread(self.sessions.principal, bearer)
        if needs is not None:
            if principal is None:
                replica_delta().inc("reco_auth_failures_total", {"status": "401"})
                raise RecoError("missing or unknown API key (header X-API-Key) or console "
                                "session (Authorization: Bearer)", status_code=401)
            if not self.keys.allowed(principal, needs):
                replica_delta().inc("reco_auth_failures_total", {"status": "403"})
                raise RecoError(f"{principal.actor} may not do {needs} operations",
                                status_code=403)
        client = principal.actor if principal is not None else f"ip:{host or 'unknown'}"
        retry_after = await self.leases.take(client)
        if retry_after:
            replica_delta().inc("reco_rate_limited_total", {"client": client.split(":")[0]})
            raise RecoError("rate limit exceeded", status_code=429,
                            headers={"Retry-After": str(retry_after)})
        return principal

    # -- recommendations -----------------------------------------------------------------

    async def call_variant(self, variant: str, requests: Batch) -> list[VariantAnswer]:
        """One call for a batch of concurrent requests (see coalesce.py)."""
        call = self.variants[variant].recommend_batch
        try:
            return await call(requests)
        except self.retry_on as exc:  # to a live (or the replacement) replica
            log.warning("variant replica lost variant=%s error=%s retrying=1", variant,
                        type(exc).__name__)
            return await call(requests)

    async def recommend(self, state: dict[str, Any], user_id: int, k: int) -> AnsweredRequest:
        """The variant's answer with `request_id` and `user_id`; logged. `state`: the
        request's ASGI scope state, where the request metrics find the variant."""
        t0 = time.perf_counter()
        alloc = self.router.allocation
        variant = self.router.assign(user_id)
        state["variant"] = variant
        result = await self.batches[variant].submit((user_id, k))
        replica_delta().set("reco_model_info", {"variant": variant,
                                                "version": str(result["model_version"])}, 1.0)
        latency = (time.perf_counter() - t0) * 1000
        request_id = str(uuid.uuid4())
        self.reco_log.add(RecoEvent(  # shipped in batches to RecoLog, which produces it
            request_id=request_id, user_id=user_id, variant=variant,
            model_version=result["model_version"], items=result["items"],
            latency_ms=latency, experiment=alloc.experiment, epoch=alloc.epoch).to_record())
        return AnsweredRequest(**result, request_id=request_id, user_id=user_id)

    def titled(self, r: AnsweredRequest) -> RecommendResponse:
        """`recommend`'s answer with the items' titles. Built without validation: every field
        comes from this replica or its variant (FastAPI serialises an instance as it is)."""
        title = self.titles.get
        return RecommendResponse.model_construct(
            request_id=r["request_id"], user_id=r["user_id"], variant=r["variant"],
            model_version=r["model_version"],
            items=[RecommendedItem.model_construct(item_id=i, title=title(i))
                   for i in r["items"]])

    # -- writes --------------------------------------------------------------------------

    async def accept(self, topic: str, event: RatingEvent | WatchEvent) -> Accepted:
        """A rating or watch event for `topic`: on disk in this replica's write-ahead log
        before the answer (fsyncs shared with concurrent writes), sent to Kafka, and kept
        until the lake holds it. A full log refuses it (503 with Retry-After)."""
        entry = self.producer.write(topic, event)
        await self.producer.durable(entry)
        return Accepted(event_id=event.event_id)

    # -- operations ----------------------------------------------------------------------

    async def health(self) -> HealthResponse:
        """Model versions per variant; writes degraded when events wait for the broker in any
        live replica's log (the replicas' figures arrive through the shared state, this
        one's directly); accepted writes not yet in the lake."""
        variants = {v: await c.status() for v, c in self.variants.items()}
        serving = all(s.version for s in variants.values())
        try:
            shared = await self.state.writes_health()
        except Exception:  # the state replica restarting: answer from this replica alone
            shared = WritesHealth()
        depth = max(shared.spool_depth, self.producer.depth)
        degraded = self.producer.degraded or shared.degraded_replicas > 0 or depth > 0
        alloc = self.router.allocation
        return HealthResponse(status="ok" if serving and not degraded else "degraded",
                              variants=variants, broker_degraded=degraded, spool_depth=depth,
                              wal_pending=max(shared.wal_pending, self.producer.pending),
                              split=alloc.split, salt=alloc.salt, weights=alloc.weights,
                              experiment=alloc.experiment, epoch=alloc.epoch)

    async def metrics_text(self) -> str:
        """Prometheus text, summed over every replica, with each variant's refused versions
        read now."""
        extra: list[Gauge] = []
        for v, c in self.variants.items():
            refused = (await c.status()).refused
            extra.append(("reco_model_refused", [("variant", v)], float(len(refused))))
        return await self.state.render(extra)

    def models(self) -> ModelsResponse:
        reg = self.registry()
        return ModelsResponse({v: VariantVersions(aliases=reg.aliases(v).named(),
                                                  versions=reg.versions(v))
                               for v in reg.variants()})

    def sign_in(self, name: str, password: str, host: str | None) -> SignedIn:
        """A console session for the account; a failure is counted and audited."""
        if self.sessions is None:
            raise RecoError("console sign-in is not configured on this API", status_code=503)
        try:
            token, role, expires = self.sessions.sign_in(name, password)
        except RecoError as exc:
            replica_delta().inc("reco_signin_failures_total", {"status": str(exc.status_code)})
            self._audit("signin_failed", f"user:{name}", {"status": exc.status_code,
                                                           "from": host or "unknown"})
            raise
        self._audit("signin", f"user:{name}", {"role": role, "from": host or "unknown"})
        return SignedIn(account=name, role=role, token=token, expires_at=expires)

    # operator actions: each is audited with its actor once it has taken effect

    def _audit(self, action: OperatorAction, actor: str, detail: dict[str, JsonValue]) -> None:
        """The action has happened: a failing audit write must not report it as failed (the
        operator would repeat it), so it is logged as an error and counted instead."""
        try:
            self.audit(action, actor, detail)
        except Exception:
            replica_delta().inc("reco_audit_failures_total", {})
            log.exception("audit write failed action=%s actor=%s", action, actor)

    def promote(self, variant: str, version: str, actor: str) -> AliasesResponse:
        """Verify, then make `version` production; variants pick it up on their next poll."""
        self.experiments.check_unpinned(variant, version)
        aliases = self.registry().promote(variant, version)
        self._audit("promote", actor, {"variant": variant, "version": version})
        return AliasesResponse(aliases.named())

    def rollback(self, variant: str, actor: str) -> AliasesResponse:
        self.experiments.check_unpinned(variant, None)
        aliases = self.registry().rollback(variant)
        self._audit("rollback", actor, {"variant": variant, "version": aliases.production})
        return AliasesResponse(aliases.named())

    def quarantined(self) -> Quarantine:
        """The quarantine with each user's evidence, for review."""
        return self._quarantine().read()

    def release(self, user: int, reason: str | None, actor: str) -> QuarantineEntry:
        """Let the user's events count again (from the next retrain)."""
        entry = self._quarantine().release(user, actor, reason)
        self._audit("release", actor, {"user_id": user, "reason": reason,
                                       "evidence": dict(entry.evidence)})
        return entry

    def flag(self, user: int, reason: str, actor: str) -> QuarantineEntry:
        """Quarantine the user by hand."""
        entry = self._quarantine().flag(user, actor, reason)
        self._audit("quarantine", actor, {"user_id": user, "reason": reason})
        return entry

    def _quarantine(self) -> QuarantineStore:
        if self.quarantine is None:
            raise RecoError("this replica has no quarantine store", status_code=503)
        return self.quarantine

    # -- operations -----------------------------------------------------------------------

    def dead_letter_counts(self, which: DeadLetterFilter) -> DeadLetterCounts:
        return self._dead_letters().counts(which.topic, which.contains)

    def replay_dead_letters(self, which: DeadLetterFilter, actor: str) -> Replayed:
        """Produce the matching dead letters back to their source topics (through this
        replica's producer: into its log if the broker is away)."""
        n = self._dead_letters().replay(self.producer.send_raw, which.topic, which.contains)
        self._audit("dlq_replay", actor, {"topic": which.topic, "contains": which.contains,
                                          "replayed": n})
        return Replayed(replayed=n)

    def _dead_letters(self) -> DeadLetters:
        if self.dead_letters is None:
            raise RecoError("this replica cannot read the lake's dead letters", status_code=503)
        return self.dead_letters

    def request_retrain(self, reason: str | None, actor: str) -> RetrainRequested:
        """Leave a "retrain now" for the scheduler, which submits it on its next tick."""
        if self.request_store is None:
            raise RecoError("this replica cannot reach the scheduler's requests",
                            status_code=503)
        request = RetrainRequest(actor=actor, requested=time.time())
        request_retrain(self.request_store, request)
        self._audit("retrain", actor, {"reason": reason})
        return RetrainRequested(actor=actor,
                                requested=datetime.fromtimestamp(request.requested, UTC))

    async def set_diversity(self, knobs: dict[str, Knob], actor: str) -> RuntimeKnobs:
        """Change Model B's strengths on every B replica (applied within a second)."""
        if not knobs:
            raise RecoError("give at least one of mmr_lambda, exploration, tail_slots",
                            status_code=422)
        shared = await self.state.set_config(None, None, knobs)
        await asyncio.to_thread(self._audit, "diversity", actor,
                                {"knobs": {k: v for k, v in knobs.items()}})
        return RuntimeKnobs(shared.b_runtime)

    async def set_split(self, split: float | None, salt: str | None, actor: str
                        ) -> SplitResponse:
        """Change the default allocation (in force while no experiment runs) for every
        replica, through the shared state."""
        running = (await self.state.config()).allocation.experiment
        if running is not None and await asyncio.to_thread(self.experiments.running) is None:
            # the store says it stopped; the serving state missed it: hand that over
            await self._allocate(await asyncio.to_thread(self.experiments.get, running))
            running = (await self.state.config()).allocation.experiment
        if running is not None:
            raise RecoError(f"experiment {running!r} is running: set its weights (POST "
                            f"/admin/experiments/{running}/weights) or stop it first",
                            status_code=409)
        shared = await self.state.set_config(split, salt, None)
        self.apply(shared)
        default = shared.default
        await asyncio.to_thread(self._audit, "split", actor,
                                {"split": default.split, "salt": default.salt})
        return SplitResponse(split=default.split, salt=default.salt)

    # -- experiments: the store records each change (with its actor), then every replica
    # follows the new allocation through the shared state

    def list_experiments(self) -> ExperimentsResponse:
        return ExperimentsResponse(self.experiments.experiments())

    def show_experiment(self, experiment: str) -> ExperimentView:
        return ExperimentView(experiment=self.experiments.get(experiment),
                              events=self.experiments.events(experiment))

    async def start_experiment(self, spec: ExperimentSpec, actor: str) -> ExperimentView:
        await asyncio.to_thread(self._servable, spec.arms)
        default = (await self.state.config()).default
        if spec.salt == default.salt:  # its users' past under the default split would carry
            raise RecoError(f"salt {spec.salt!r} is the default split's: choose another",
                            status_code=409)
        return await self._allocate(
            await asyncio.to_thread(self.experiments.start, spec, actor))

    async def set_weights(self, experiment: str, weights: dict[str, float], actor: str
                          ) -> ExperimentView:
        return await self._change(experiment, self.experiments.set_weights, experiment,
                                  weights, actor)

    async def add_arm(self, experiment: str, arm: ArmSpec, weight: float, actor: str
                      ) -> ExperimentView:
        await asyncio.to_thread(self._servable, [arm])
        return await self._change(experiment, self.experiments.add_arm, experiment, arm,
                                  weight, actor)

    async def stop_experiment(self, experiment: str, actor: str) -> ExperimentView:
        return await self._change(experiment, self.experiments.stop, experiment, actor)

    async def _change(self, experiment: str, change: Callable[..., Experiment],
                      *args: Any) -> ExperimentView:
        """A change of `experiment` recorded, then shared. A change its state refuses (it
        stopped, say) hands the recorded state over again first: if an earlier change was
        recorded but never reached the serving state, repeating it repairs that."""
        try:
            exp = await asyncio.to_thread(change, *args)
        except ExperimentError as exc:
            if exc.status_code == 409:
                with contextlib.suppress(Exception):
                    await self._allocate(
                        await asyncio.to_thread(self.experiments.get, experiment))
            raise
        return await self._allocate(exp)

    def _servable(self, arms: list[ArmSpec]) -> None:
        """Every arm is a deployed variant, at its pinned version if it pins one (variants
        serve their production version: pin the one that is production); 409 otherwise,
        as what is deployed and promoted is the platform's state."""
        for arm in arms:
            if arm.variant not in self.variants:
                raise RecoError(f"variant {arm.variant!r} is not deployed (deployed: "
                                f"{sorted(self.variants)}): add it to RECO_VARIANTS and "
                                "redeploy (reco serve start)", status_code=409)
            if arm.version is not None:
                production = self.registry().aliases(arm.variant).production
                if production != arm.version:
                    raise RecoError(f"{arm.variant} serves {production}, not the pinned "
                                    f"{arm.version}: promote it first", status_code=409)

    async def _allocate(self, exp: Experiment) -> ExperimentView:
        """Every replica to `exp`'s allocation (the default one once it stopped)."""
        try:
            shared = await self.state.set_allocation(allocation_of(exp), exp.revision)
        except Exception as exc:
            log.exception("allocation not shared experiment=%s", exp.spec.id)
            raise RecoError(f"recorded, but the serving state did not take it ({exc}): it "
                            "applies when that replica restarts", status_code=503) from None
        self.apply(shared)
        events = await asyncio.to_thread(self.experiments.events, exp.spec.id)
        return ExperimentView(experiment=exp, events=events)
