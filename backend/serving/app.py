"""The Ray Serve application: FastAPI ingress -> sticky A/B router -> variant deployments.

`build_app(AppArgs)` returns the Application; `reco serve start` runs it. Logic lives in
plain classes (`RouterLogic`, `VariantLogic`, `RateLimiterLogic`, `ApiKeys`); the deployments
here only wire them to HTTP and to each other. Run-time knobs arrive through `user_config`
(`reconfigure`): the split and salt on the ingress, the diversity strengths on variant B.
"""


import logging
import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from backend.errors import RecoError
from backend.events import MAX_ID, RatingEvent, RecoEvent, WatchEvent
from backend.settings import Settings

log = logging.getLogger(__name__)
MAX_BODY = 16 * 1024

api = FastAPI(title="Movie recommender", version="0.1.0")


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


@serve.deployment(name="Variant", num_replicas=1, ray_actor_options={"num_cpus": 0.25})
class VariantDeployment:
    def __init__(self, settings: Settings, variant: str) -> None:
        from backend.serving.variant import VariantLogic
        from registry import open_registry

        self.logic = VariantLogic(open_registry(settings), variant)
        self._period = settings.serve.reload_seconds
        threading.Thread(target=self._reload_loop, daemon=True).start()

    def _reload_loop(self) -> None:
        while True:
            time.sleep(self._period)
            try:
                self.logic.reload()
            except Exception:  # keep serving the current version whatever the reload hit
                log.exception("reload failed variant=%s", self.logic.variant)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.logic.configure(config.get("runtime", {}))

    def recommend(self, user_id: int, k: int) -> dict[str, Any]:
        return self.logic.recommend(user_id, k)

    def status(self) -> dict[str, Any]:
        return self.logic.status()


def _client(request: Request, principal: Any) -> str:
    if principal is not None:
        return f"key:{principal.name}"
    return f"ip:{request.client.host if request.client else 'unknown'}"


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: Settings, variant_a: DeploymentHandle,
                 variant_b: DeploymentHandle) -> None:
        from backend.data.movielens import load
        from backend.kafka import EventProducer
        from backend.serving.auth import ApiKeys
        from backend.serving.ratelimit import RateLimiterLogic
        from backend.serving.router import RouterLogic

        self.settings = settings
        cfg = settings.serve
        self.variants = {"A": variant_a, "B": variant_b}
        self.router = RouterLogic(cfg.split, cfg.salt)
        self.keys = ApiKeys({n: (k.sha256, k.role) for n, k in cfg.api_keys.items()})
        self.limiter = RateLimiterLogic(
            per_minute=cfg.per_minute,
            overrides={f"key:{n}": k.per_minute for n, k in cfg.api_keys.items()
                       if k.per_minute})
        self.producer = EventProducer(settings.kafka, settings.spool_dir / "serve")
        try:
            items = load(settings.data_cache).items
            self.titles = dict(zip(items["item_id"].tolist(), items["title"].tolist(),
                                   strict=True))
        except Exception:  # no data cache: answer without titles rather than not at all
            log.warning("MovieLens items unavailable; recommendations carry no titles")
            self.titles = {}

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.router.reconfigure(config)

    # -- guards ----------------------------------------------------------------------------

    def _guard(self, request: Request, needs: str | None) -> Any:
        """Authenticate, authorise and rate-limit; raises RecoError with the HTTP status."""
        length = int(request.headers.get("content-length") or 0)
        if length > MAX_BODY:
            raise _HttpError(413, f"body of {length} bytes exceeds {MAX_BODY}")
        presented = request.headers.get("x-api-key")
        principal = self.keys.authenticate(presented)
        if needs is not None:
            if principal is None:
                raise _HttpError(401, "missing or unknown API key (header X-API-Key)")
            if not self.keys.allowed(principal, needs):
                raise _HttpError(403, f"this key may not do {needs} operations")
        allowed, retry_after = self.limiter.check(_client(request, principal))
        if not allowed:
            raise _HttpError(429, "rate limit exceeded", {"Retry-After": str(retry_after)})
        return principal

    # -- recommendations -------------------------------------------------------------------

    async def _recommend(self, user_id: int, k: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        variant = self.router.assign(user_id)
        result = await self.variants[variant].recommend.remote(user_id, k)
        latency = (time.perf_counter() - t0) * 1000
        request_id = str(uuid.uuid4())
        self.producer.send("events.reco", RecoEvent(
            request_id=request_id, user_id=user_id, variant=variant,
            model_version=result["model_version"], items=result["items"],
            latency_ms=latency))
        return result | {"request_id": request_id, "user_id": user_id}

    @api.get("/recommend")
    async def recommend_json(self, request: Request, user_id: int = Query(ge=1, le=MAX_ID),
                             k: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
        self._guard(request, None)
        r = await self._recommend(user_id, k)
        return {"request_id": r["request_id"], "user_id": user_id, "variant": r["variant"],
                "model_version": r["model_version"],
                "items": [{"item_id": i, "title": self.titles.get(i)} for i in r["items"]]}

    @api.get("/recommend/{user_id}", response_class=PlainTextResponse)
    async def recommend_plain(self, request: Request, user_id: int,
                              k: int = Query(10, ge=1, le=100)) -> str:
        if not 1 <= user_id <= MAX_ID:
            raise _HttpError(422, f"user_id must be within 1..{MAX_ID}")
        self._guard(request, None)
        r = await self._recommend(user_id, k)
        return ",".join(str(i) for i in r["items"])

    # -- writes ----------------------------------------------------------------------------

    @api.post("/rate", status_code=202)
    async def rate(self, request: Request, event: RatingEvent) -> dict[str, str]:
        self._guard(request, "client")
        self.producer.send("events.rating", event)
        return {"event_id": event.event_id, "status": "accepted"}

    @api.post("/watch", status_code=202)
    async def watch(self, request: Request, event: WatchEvent) -> dict[str, str]:
        self._guard(request, "client")
        self.producer.send("events.watch", event)
        return {"event_id": event.event_id, "status": "accepted"}

    # -- operations ------------------------------------------------------------------------

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        variants = {v: await h.status.remote() for v, h in self.variants.items()}
        serving = all(s["version"] for s in variants.values())
        degraded = self.producer.degraded or self.producer.spool.depth > 0
        return {"status": "ok" if serving and not degraded else "degraded",
                "variants": variants, "broker_degraded": self.producer.degraded,
                "spool_depth": self.producer.spool.depth,
                "split": self.router.split, "salt": self.router.salt}

    @api.get("/models")
    async def models(self, request: Request) -> dict[str, Any]:
        from registry import open_registry

        self._guard(request, "admin")
        reg = open_registry(self.settings)
        return {v: {"aliases": reg.aliases(v), "versions": reg.versions(v)}
                for v in reg.variants()}

    @api.post("/admin/promote")
    async def admin_promote(self, request: Request, body: PromoteRequest) -> dict[str, Any]:
        """Verify, then make `version` production; variants pick it up on their next poll."""
        from registry import open_registry

        self._guard(request, "admin")
        return open_registry(self.settings).promote(body.variant, body.version)

    @api.post("/admin/rollback")
    async def admin_rollback(self, request: Request, body: RollbackRequest) -> dict[str, Any]:
        from registry import open_registry

        self._guard(request, "admin")
        return open_registry(self.settings).rollback(body.variant)

    @api.post("/admin/split")
    async def admin_split(self, request: Request, body: SplitRequest) -> dict[str, Any]:
        self._guard(request, "admin")
        self.router.reconfigure(body.model_dump(exclude_none=True))
        return {"split": self.router.split, "salt": self.router.salt}


def build_app(args: AppArgs, settings: Settings | None = None) -> serve.Application:
    settings = settings or Settings()
    a = VariantDeployment.options(name="VariantA").bind(settings, "A")
    b = VariantDeployment.options(name="VariantB", user_config={"runtime": args.b_runtime}
                                  ).bind(settings, "B")
    return Ingress.options(num_replicas=args.ingress_replicas,
                           user_config={"split": args.split, "salt": args.salt}
                           ).bind(settings, a, b)
