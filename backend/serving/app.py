"""The Ray Serve application: FastAPI ingress -> sticky A/B router -> variant deployments.

`build_app(AppArgs)` returns the Application; `reco serve start` runs it. Logic lives in
plain classes (`RouterLogic`, `VariantLogic`, `RateLimiterLogic`, `ApiKeys`); the deployments
here only wire them to HTTP and to each other. Run-time knobs arrive through `user_config`
(`reconfigure`): the split and salt on the ingress, the diversity strengths on variant B.
"""


import asyncio
import functools
import logging
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from backend.core.errors import RecoError
from backend.core.settings import Settings
from backend.data.events import MAX_ID, RatingEvent, RecoEvent, WatchEvent
from backend.data.kafka import EventProducer, claim_spool
from backend.data.movielens import load
from backend.serving.auth import ApiKeys
from backend.serving.coalesce import Coalescer
from backend.serving.hotpath import hot_request
from backend.serving.leases import Leases
from backend.serving.recolog import LogShipper
from backend.serving.router import RouterLogic
from backend.serving.state import ServingStateLogic, replica_delta, take_replica_delta
from backend.serving.variant import VariantLogic
from registry import open_registry

log = logging.getLogger(__name__)
MAX_BODY = 16 * 1024
PUSH_SECONDS = 1.0  # how often a replica pushes metrics and reads the shared experiment


def _push_producer_gauges(producer: "EventProducer", replica: str, pushed: int) -> int:
    """One replica's producer health into its metric delta: spool depth, degraded, and the
    events spooled since `pushed` as produce errors. Returns the new `pushed`."""
    delta = replica_delta()
    delta.set("reco_spool_depth", {"replica": replica}, float(producer.spool.depth))
    delta.set("reco_broker_degraded", {"replica": replica}, float(producer.degraded))
    if producer.spooled > pushed:
        delta.inc("reco_kafka_produce_errors_total", {}, producer.spooled - pushed)
    return producer.spooled


class ErrorBody(BaseModel):
    """Every 4xx: a message, or FastAPI's list of field errors for request validation."""

    detail: str | list[dict[str, Any]]


# one documented error shape for 422, always JSON (FastAPI's default documents only its own
# field-error list, in the route's media type: schemathesis found both mismatches)
_ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
api = FastAPI(title="Movie recommender", version="0.1.0", responses={
    422: {"model": ErrorBody, "description": "invalid input", "content": _ERROR_JSON}})


class _RequestMetrics:
    """Counts every response by route, status and variant, and times /recommend by variant.
    Plain ASGI (Starlette's BaseHTTPMiddleware costs a task and a stream per request)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        state = scope.setdefault("state", {})

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:  # the client went away first (nginx's and Serve's 499)
            if status == 500:
                status = 499
            raise
        finally:
            delta = replica_delta()
            path = getattr(scope.get("route"), "path", "unmatched")
            variant = state.get("variant", "")
            delta.inc("reco_requests_total", {"route": path, "status": str(status),
                                              "variant": variant})
            if variant and status != 499:  # answered: its latency is a user's
                delta.observe(time.perf_counter() - t0, {"variant": variant})


HOT_ROUTE = SimpleNamespace(path="/recommend/{user_id}")  # what the metrics read of a route


class _HotPath:
    """`GET /recommend/{user_id}` straight to the ingress, past FastAPI's routing, dependency
    solving and response classes (a quarter of the ingress's Python profile samples). Only a
    well-formed request takes it: anything else, and every error of input, goes through
    FastAPI, so the route, its OpenAPI entry and its errors stay FastAPI's."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        hot = hot_request(scope) if scope["type"] == "http" else None
        headers = dict(scope["headers"]) if hot is not None else {}
        if hot is None or b"content-length" in headers:  # a GET with a body: FastAPI judges
            await self.app(scope, receive, send)
            return
        scope["route"] = HOT_ROUTE
        ingress = serve.get_replica_context().servable_object
        client = scope.get("client")
        try:
            await ingress._guard(headers.get(b"x-api-key", b"").decode("latin-1") or None,
                                 client[0] if client else None, 0, None)
            r = await ingress._recommend(scope.setdefault("state", {}), *hot)
        except RecoError as exc:  # the app's one error handler answers, as for any route
            await (await _reco_error(None, exc))(scope, receive, send)
            return
        body = ",".join(map(str, r["items"])).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# Starlette wraps the last added outermost: the metrics see the hot path's responses too
api.add_middleware(_HotPath)
api.add_middleware(_RequestMetrics)


class AppArgs(BaseModel):
    """What `build_app` needs; everything else comes from `Settings` in the replicas."""

    split: float = Field(0.5, ge=0, le=1)
    salt: str = "exp-1"
    b_runtime: dict[str, float] = {}
    ingress_replicas: int = Field(1, ge=1)


class _HttpError(RecoError):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status
        self.headers = headers or {}


# registered before the ingress class: serve.ingress captures the app as it is then
@api.exception_handler(RecoError)
async def _reco_error(_request: Request, exc: RecoError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


class RollbackRequest(BaseModel):
    variant: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")


class PromoteRequest(RollbackRequest):
    version: str = Field(pattern=r"^v\d{1,8}$")


class SplitRequest(BaseModel):
    split: float | None = Field(None, ge=0, le=1)
    salt: str | None = Field(None, min_length=1, max_length=64)


class DiversityRequest(BaseModel):
    """Model B's run-time strengths (see DiversityKNN)."""

    model_config = {"extra": "forbid"}
    mmr_lambda: float | None = Field(None, ge=0, le=1)
    exploration: float | None = Field(None, ge=0, le=5)
    tail_slots: int | None = Field(None, ge=0, le=100)


@serve.deployment(name="Variant", num_replicas=1, ray_actor_options={"num_cpus": 0.25})
class VariantDeployment:
    def __init__(self, settings: Settings, variant: str,
                 state: DeploymentHandle | None = None) -> None:
        self.logic = VariantLogic(open_registry(settings), variant)
        self.state = state  # variant B: follows the shared run-time knobs
        self._generation = -1
        self._follower: asyncio.Task | None = None
        self._period = settings.serve.reload_seconds
        threading.Thread(target=self._reload_loop, daemon=True).start()

    def _reload_loop(self) -> None:
        while True:
            time.sleep(self._period)
            try:
                self.logic.reload()
            except Exception:  # keep serving the current version whatever the reload hit
                log.exception("reload failed variant=%s", self.logic.variant)

    async def _follow(self) -> None:
        """Apply the shared run-time knobs (admin endpoint or a new user_config) within a
        second, on every replica of this variant."""
        while True:
            await asyncio.sleep(PUSH_SECONDS)
            try:
                cfg = await self.state.config.remote()
                if cfg["generation"] != self._generation and cfg["b_runtime"]:
                    self.logic.configure(cfg["b_runtime"])
                self._generation = cfg["generation"]
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
            self._follower = asyncio.get_running_loop().create_task(self._follow())

    # async: Serve runs a sync method in a worker thread, and the hand-off (and the threads
    # anyio starts) cost the replica several times the model's 0.2-0.4 ms
    async def recommend_batch(self, requests: list[tuple[int, int]]) -> list[dict[str, Any]]:
        return self.logic.recommend_batch(requests)

    async def status(self) -> dict[str, Any]:
        return self.logic.status()


@serve.deployment(name="ServingState", num_replicas=1, max_ongoing_requests=1000,
                  ray_actor_options={"num_cpus": 0.1})
class ServingState:
    """Exactly one: rate-limit leases, the experiment, metric sums (see state.py). Methods
    are async so they run on the replica's loop, not in a worker thread."""

    def __init__(self, settings: Settings) -> None:
        cfg = settings.serve
        self.logic = ServingStateLogic(
            cfg.per_minute, {f"key:{n}": k.per_minute for n, k in cfg.api_keys.items()
                             if k.per_minute}, cfg.split, cfg.salt)

    async def acquire(self, client: str) -> tuple[int, int]:
        return self.logic.acquire(client)

    async def record(self, payload: dict[str, Any]) -> None:
        self.logic.metrics.merge(payload)

    async def render(self, extra: list | None = None) -> str:
        return self.logic.metrics.render(
            {(n, tuple(map(tuple, ls))): v for n, ls, v in (extra or [])})

    async def config(self) -> dict[str, Any]:
        return self.logic.config()

    async def writes_health(self) -> dict[str, Any]:
        return self.logic.writes_health()

    async def deployed(self, split: float, salt: str) -> dict[str, Any]:
        return self.logic.deployed(split, salt)

    async def set_config(self, split: float | None, salt: str | None,
                         b_runtime: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.logic.set_config(split, salt, b_runtime)

    async def deployed_runtime(self, runtime: dict[str, Any]) -> dict[str, Any]:
        return self.logic.deployed_runtime(runtime)


@serve.deployment(name="RecoLog", num_replicas=1, max_ongoing_requests=64,
                  ray_actor_options={"num_cpus": 0.1})
class RecoLogDeployment:
    """Produces the ingress replicas' reco log to events.reco, batches at a time (see
    recolog.py), with its own spool for when the broker is away."""

    def __init__(self, settings: Settings, state: DeploymentHandle) -> None:
        self.replica = serve.get_replica_context().replica_id.unique_id
        spool, self._spool_lock = claim_spool(settings.spool_dir / "serve", self.replica)
        # a produce request per batch, not per record
        kafka = settings.kafka.model_copy(update={"linger_ms": settings.serve.log_linger_ms})
        self.producer = EventProducer(kafka, spool)
        self.state = state
        self._pusher: asyncio.Task | None = None
        self._pushed = 0

    async def write(self, records: list[dict[str, Any]]) -> int:
        """Records are `RecoEvent.to_record()` dicts, validated where they were made."""
        self._start_pusher()
        for record in records:
            self.producer.send("events.reco", record)
        return len(records)

    async def check_health(self) -> None:  # Serve calls it every few seconds
        self._start_pusher()

    def _start_pusher(self) -> None:
        if self._pusher is None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_loop())

    async def _push_loop(self) -> None:
        """This replica's spool depth and broker state, for /health and /metrics."""
        while True:
            try:
                self._pushed = _push_producer_gauges(self.producer, self.replica, self._pushed)
                await self.state.record.remote(take_replica_delta().as_payload())
            except Exception:  # the state replica restarting: try again next period
                log.warning("push to the serving state failed", exc_info=True)
            await asyncio.sleep(PUSH_SECONDS)

    async def __del__(self) -> None:
        self.producer.close(timeout=5)


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: Settings, variant_a: DeploymentHandle,
                 variant_b: DeploymentHandle, state: DeploymentHandle,
                 reco_log: DeploymentHandle) -> None:
        self.settings = settings
        cfg = settings.serve
        self.variants = {"A": variant_a, "B": variant_b}
        self.batches = {v: Coalescer(functools.partial(self._call_variant, v),
                                     cfg.coalesce_inflight, cfg.coalesce_max_batch)
                        for v in self.variants}
        self.state = state
        self.router = RouterLogic(cfg.split, cfg.salt)
        self._generation = -1
        self.keys = ApiKeys({n: (k.sha256, k.role) for n, k in cfg.api_keys.items()})
        self._leases = Leases(state.acquire.remote)
        self._pusher: asyncio.Task | None = None
        self._spooled_pushed = 0
        replica = serve.get_replica_context().replica_id.unique_id
        self.replica = replica
        spool, self._spool_lock = claim_spool(settings.spool_dir / "serve", replica)
        self.producer = EventProducer(settings.kafka, spool)  # writes; the reco log's fallback
        self.reco_log = LogShipper(reco_log.write.remote, functools.partial(
            self.producer.send, "events.reco"), interval=cfg.log_linger_ms / 1000)
        try:
            items = load(settings.data_cache).items
            self.titles = dict(zip(items["item_id"].tolist(), items["title"].tolist(),
                                   strict=True))
        except Exception:  # no data cache: answer without titles rather than not at all
            log.warning("MovieLens items unavailable; recommendations carry no titles")
            self.titles = {}

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """A deployed `user_config`: applied here now, and through the shared state on every
        replica within a push period (unless it is the config already deployed)."""
        self.router.reconfigure(config)
        shared = await self.state.deployed.remote(self.router.split, self.router.salt)
        self._apply(shared)

    def _apply(self, shared: dict[str, Any]) -> None:
        if shared["generation"] != self._generation:
            self.router.reconfigure({"split": shared["split"], "salt": shared["salt"]})
            self._generation = shared["generation"]

    async def _push_loop(self) -> None:
        """Push metric deltas and pick up experiment changes, about once a second."""
        while True:
            await asyncio.sleep(PUSH_SECONDS)
            try:
                self._spooled_pushed = _push_producer_gauges(self.producer, self.replica,
                                                             self._spooled_pushed)
                delta = take_replica_delta()
                if not delta.empty():
                    await self.state.record.remote(delta.as_payload())
                self._apply(await self.state.config.remote())
            except Exception:  # the state replica restarting: try again next period
                log.warning("push to the serving state failed", exc_info=True)

    async def __del__(self) -> None:
        """Shutting down: the reco log still queued leaves, and the producer drains."""
        await self.reco_log.close()
        self.producer.close(timeout=5)

    # -- guards ----------------------------------------------------------------------------

    async def _guard_request(self, request: Request, needs: str | None) -> Any:
        return await self._guard(request.headers.get("x-api-key"),
                                 request.client.host if request.client else None,
                                 int(request.headers.get("content-length") or 0), needs)

    async def _guard(self, presented: str | None, host: str | None, length: int,
                     needs: str | None) -> Any:
        """Authenticate, authorise and rate-limit; raises RecoError with the HTTP status."""
        if self._pusher is None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_loop())
        if length > MAX_BODY:
            raise _HttpError(413, f"body of {length} bytes exceeds {MAX_BODY}")
        principal = self.keys.authenticate(presented)
        if needs is not None:
            if principal is None:
                replica_delta().inc("reco_auth_failures_total", {"status": "401"})
                raise _HttpError(401, "missing or unknown API key (header X-API-Key)")
            if not self.keys.allowed(principal, needs):
                replica_delta().inc("reco_auth_failures_total", {"status": "403"})
                raise _HttpError(403, f"this key may not do {needs} operations")
        client = f"key:{principal.name}" if principal is not None else f"ip:{host or 'unknown'}"
        retry_after = await self._leases.take(client)
        if retry_after:
            replica_delta().inc("reco_rate_limited_total", {"client": client.split(":")[0]})
            raise _HttpError(429, "rate limit exceeded", {"Retry-After": str(retry_after)})
        return principal

    # -- recommendations -------------------------------------------------------------------

    async def _call_variant(self, variant: str, requests: list[tuple[int, int]]
                            ) -> list[dict[str, Any]]:
        """One handle call for a batch of concurrent requests (see coalesce.py)."""
        handle = self.variants[variant]
        try:
            return await handle.recommend_batch.remote(requests)
        except RayActorError as exc:  # the replica died mid-request: Serve routes the retry
            log.warning("variant replica lost variant=%s error=%s retrying=1", variant,
                        type(exc).__name__)  # to a live (or the replacement) replica
            return await handle.recommend_batch.remote(requests)

    async def _recommend(self, state: dict, user_id: int, k: int) -> dict[str, Any]:
        """`state`: the request's ASGI scope state, where the metrics find the variant."""
        t0 = time.perf_counter()
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
            latency_ms=latency).to_record())
        return result | {"request_id": request_id, "user_id": user_id}

    @api.get("/recommend")
    async def recommend_json(self, request: Request, user_id: int = Query(ge=1, le=MAX_ID),
                             k: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
        await self._guard_request(request, None)
        r = await self._recommend(request.scope["state"], user_id, k)
        return {"request_id": r["request_id"], "user_id": user_id, "variant": r["variant"],
                "model_version": r["model_version"],
                "items": [{"item_id": i, "title": self.titles.get(i)} for i in r["items"]]}

    @api.get("/recommend/{user_id}", response_class=PlainTextResponse)
    async def recommend_plain(self, request: Request, user_id: int,
                              k: int = Query(10, ge=1, le=100)) -> str:
        if not 1 <= user_id <= MAX_ID:
            raise _HttpError(422, f"user_id must be within 1..{MAX_ID}")
        await self._guard_request(request, None)
        r = await self._recommend(request.scope["state"], user_id, k)
        return ",".join(str(i) for i in r["items"])

    # -- writes ----------------------------------------------------------------------------

    @api.post("/rate", status_code=202)
    async def rate(self, request: Request, event: RatingEvent) -> dict[str, str]:
        await self._guard_request(request, "client")
        self.producer.send("events.rating", event)
        return {"event_id": event.event_id, "status": "accepted"}

    @api.post("/watch", status_code=202)
    async def watch(self, request: Request, event: WatchEvent) -> dict[str, str]:
        await self._guard_request(request, "client")
        self.producer.send("events.watch", event)
        return {"event_id": event.event_id, "status": "accepted"}

    # -- operations ------------------------------------------------------------------------

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        """Model versions per variant; writes degraded when any live replica spools (the
        replicas' spool figures arrive through the shared state, this one's directly)."""
        variants = {v: await h.status.remote() for v, h in self.variants.items()}
        serving = all(s["version"] for s in variants.values())
        try:
            shared = await self.state.writes_health.remote()
        except Exception:  # the state replica restarting: answer from this replica alone
            shared = {"spool_depth": 0, "degraded_replicas": 0}
        depth = max(shared["spool_depth"], self.producer.spool.depth)
        degraded = self.producer.degraded or shared["degraded_replicas"] > 0 or depth > 0
        return {"status": "ok" if serving and not degraded else "degraded",
                "variants": variants, "broker_degraded": degraded, "spool_depth": depth,
                "split": self.router.split, "salt": self.router.salt}

    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics(self) -> PlainTextResponse:
        """Prometheus text, summed over every ingress replica (pushed about once a second)."""
        extra = []
        for v, h in self.variants.items():
            refused = (await h.status.remote()).get("refused") or {}
            extra.append(["reco_model_refused", [["variant", v]], float(len(refused))])
        text = await self.state.render.remote(extra)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @api.get("/models")
    async def models(self, request: Request) -> dict[str, Any]:
        await self._guard_request(request, "admin")
        reg = open_registry(self.settings)
        return {v: {"aliases": reg.aliases(v).named(), "versions": reg.versions(v)}
                for v in reg.variants()}

    @api.post("/admin/promote")
    async def admin_promote(self, request: Request, body: PromoteRequest) -> dict[str, Any]:
        """Verify, then make `version` production; variants pick it up on their next poll."""

        await self._guard_request(request, "admin")
        return open_registry(self.settings).promote(body.variant, body.version).named()

    @api.post("/admin/rollback")
    async def admin_rollback(self, request: Request, body: RollbackRequest) -> dict[str, Any]:
        await self._guard_request(request, "admin")
        return open_registry(self.settings).rollback(body.variant).named()

    @api.post("/admin/diversity")
    async def admin_diversity(self, request: Request, body: DiversityRequest) -> dict[str, Any]:
        """Change Model B's strengths on every B replica (applied within a second)."""
        await self._guard_request(request, "admin")
        knobs = body.model_dump(exclude_none=True)
        if not knobs:
            raise _HttpError(422, "give at least one of mmr_lambda, exploration, tail_slots")
        return (await self.state.set_config.remote(None, None, knobs))["b_runtime"]

    @api.post("/admin/split")
    async def admin_split(self, request: Request, body: SplitRequest) -> dict[str, Any]:
        """Change the experiment for every replica (through the shared state)."""
        await self._guard_request(request, "admin")
        shared = await self.state.set_config.remote(body.split, body.salt)
        self._apply(shared)
        return {"split": self.router.split, "salt": self.router.salt}


def build_app(args: AppArgs) -> serve.Application:
    """Serve's typed application builder (serve_config.yaml's import_path). Settings come from
    the RECO_* environment, which `reco serve start` puts in the app's runtime_env."""
    settings = Settings()
    state = ServingState.bind(settings)
    a = VariantDeployment.options(name="VariantA").bind(settings, "A")
    b = VariantDeployment.options(name="VariantB", user_config={"runtime": args.b_runtime}
                                  ).bind(settings, "B", state)
    reco_log = RecoLogDeployment.bind(settings, state)
    return Ingress.options(num_replicas=args.ingress_replicas,
                           user_config={"split": args.split, "salt": args.salt}
                           ).bind(settings, a, b, state, reco_log)
