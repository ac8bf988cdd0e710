"""The HTTP API: FastAPI routes over an `IngressLogic`, the request-metrics and hot-path
middlewares, and the one error handler.

`create_api(current)` builds the app; `current()` gives the `IngressLogic` that answers (in
unit tests, one with fakes injected). The `Ingress` deployment serves `api`, built here at
import, as Serve's ingress, and makes its logic this process's (`answer_with`).
"""

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.core.errors import RecoError
from backend.data.deadletters import DeadLetterCounts
from backend.data.events import MAX_ID, RatingEvent, WatchEvent
from backend.serving.auth import Principal
from backend.serving.hotpath import hot_request
from backend.serving.ingress import IngressLogic
from backend.serving.metrics import replica_delta
from backend.serving.schemas import (
    Accepted,
    AddArmRequest,
    AliasesResponse,
    DeadLetterFilter,
    DiversityRequest,
    ErrorBody,
    ExperimentsResponse,
    ExperimentView,
    FlagRequest,
    HealthResponse,
    ModelsResponse,
    PromoteRequest,
    RecommendResponse,
    ReleaseRequest,
    Replayed,
    RetrainRequestBody,
    RetrainRequested,
    RollbackRequest,
    RuntimeKnobs,
    SignedIn,
    SignInRequest,
    SplitRequest,
    SplitResponse,
    WeightsRequest,
)
from registry.experiments import NAME, ExperimentSpec
from registry.quarantine import Quarantine, QuarantineEntry

# one documented error shape, always JSON (FastAPI's default documents only its own 422
# field-error list, in the route's media type: schemathesis found both mismatches)
_ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def _error(what: str, **extra: Any) -> dict[str, Any]:
    return {"model": ErrorBody, "description": what, "content": _ERROR_JSON, **extra}


API_KEY = APIKeyHeader(name="X-API-Key", scheme_name="ApiKey", auto_error=False,
                       description="a client key (writes) or an admin key (admin routes)")
CONSOLE_SESSION = HTTPBearer(scheme_name="ConsoleSession", auto_error=False,
                             description="a console session's token (`POST /auth/signin`): "
                                         "a viewer's reads, an operator's acts")
Key = Annotated[str | None, Security(API_KEY)]
Session = Annotated[Any, Security(CONSOLE_SESSION)]

# every route may answer these (the guard and the body parser run before any handler)
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("the body is not JSON (or not UTF-8)"),
    401: _error("missing or unknown API key (X-API-Key) or console session (Bearer)"),
    403: _error("the key or session may not do this operation"),
    404: _error("no such resource"),
    413: _error("the body is larger than the API takes"),
    422: _error("invalid input: a field error list, or the reason"),
    429: _error("rate limit exceeded: retry after the seconds in Retry-After", headers={
        "Retry-After": {"description": "seconds until the key's bucket has a token",
                        "schema": {"type": "integer", "minimum": 1}}}),
}
_REFUSALS: dict[int | str, dict[str, Any]] = {
    404: _error("no such experiment, or the user is not quarantined"),
    409: _error("refused: it conflicts with the current state (what is deployed, promoted "
                "or running)"),
    503: _error("recorded, but not yet shared with every replica")}
# a write refused rather than lost: the replica's write-ahead log is at its bound
_WAL_FULL = _error("not accepted: the write-ahead log is full (the lake is behind); retry "
                   "after the seconds in Retry-After", headers={
                       "Retry-After": {"description": "seconds to wait before retrying",
                                       "schema": {"type": "integer", "minimum": 1}}})
ExperimentId = Path(pattern=NAME)
HOT_ROUTE = SimpleNamespace(path="/recommend/{user_id}")  # what the metrics read of a route


def error_response(exc: RecoError) -> JSONResponse:
    """A RecoError as HTTP: its status, headers and `{"detail": ...}`."""
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                        headers=exc.headers)


def _bearer(request: Request) -> str | None:
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def guard(logic: IngressLogic, request: Request, needs: str | None) -> Principal | None:
    return await logic.guard(request.headers.get("x-api-key"),
                             request.client.host if request.client else None,
                             int(request.headers.get("content-length") or 0), needs,
                             _bearer(request))


async def operator(logic: IngressLogic, request: Request) -> str:
    """The admin key's or operator account's name behind the call: the actor its audit
    record names."""
    who = await guard(logic, request, "admin")
    if who is None:  # guard refuses an admin call without a key; never reached
        raise RecoError("missing or unknown API key (header X-API-Key)", status_code=401)
    return who.actor


class RequestMetrics:
    """Counts every response by route, status and variant, and times /recommend by variant.
    Plain ASGI (Starlette's BaseHTTPMiddleware costs a task and a stream per request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        state = scope.setdefault("state", {})

        async def send_status(message: Message) -> None:
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


class HotPath:
    """`GET /recommend/{user_id}` straight to the ingress logic, past FastAPI's routing,
    dependency solving and response classes (a quarter of the ingress's Python profile
    samples). Only a well-formed request takes it: anything else, and every error of input,
    goes through FastAPI, so the route, its OpenAPI entry and its errors stay FastAPI's."""

    def __init__(self, app: ASGIApp, current: Callable[[], IngressLogic]) -> None:
        self.app = app
        self.current = current

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = hot_request(scope) if scope["type"] == "http" else None
        headers = dict(scope["headers"]) if hot is not None else {}
        if hot is None or b"content-length" in headers:  # a GET with a body: FastAPI judges
            await self.app(scope, receive, send)
            return
        scope["route"] = HOT_ROUTE
        logic = self.current()
        client = scope.get("client")
        try:
            await logic.guard(headers.get(b"x-api-key", b"").decode("latin-1") or None,
                              client[0] if client else None, 0, None)
            r = await logic.recommend(scope.setdefault("state", {}), *hot)
        except RecoError as exc:  # the app's one error handler answers, as for any route
            await error_response(exc)(scope, receive, send)
            return
        body = ",".join(map(str, r["items"])).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_api(current: Callable[[], IngressLogic]) -> FastAPI:
    """The app, its routes answered by `current()`."""
    api = FastAPI(title="Movie recommender", version="0.1.0", responses=_ERRORS)

    @api.exception_handler(RecoError)
    async def reco_error(_request: Request, exc: RecoError) -> JSONResponse:
        return error_response(exc)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals in the one shape; a 405 names every method the path
        has (Starlette's names only the first route matching the path)."""
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = {m for r in api.routes if isinstance(r, APIRoute)
                       and r.matches(request.scope)[0] != Match.NONE for m in r.methods or ()}
            headers["Allow"] = ", ".join(sorted(allowed))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=headers)

    @api.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI parses a JSON body before any dependency runs, so a body that is not JSON
        meets the route's guard here first (401/403/429 before the 400 it is documented as);
        any other invalid input was guarded already and gets FastAPI's field error list."""
        if not any(e.get("type") == "json_invalid" for e in exc.errors()):
            return await request_validation_exception_handler(request, exc)
        route = request.scope.get("route")
        for dep in route.dependant.dependencies if isinstance(route, APIRoute) else ():
            if dep.call in guards:
                try:
                    await dep.call(request)
                except RecoError as refused:
                    return error_response(refused)
        return JSONResponse({"detail": "the body is not JSON: "
                             + "; ".join(str(e.get("ctx", {}).get("error", e["msg"]))
                                         for e in exc.errors())}, status_code=400)

    generated = api.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with every error documented as the JSON it is (FastAPI adds the
        route's media type, text/plain on the course route, to each error response)."""
        schema = generated()
        anonymous = {r.path_format for r in api.routes if isinstance(r, APIRoute)
                     and any(d.call is anyone for d in r.dependant.dependencies)}
        for path, operations in schema["paths"].items():
            for op in operations.values():
                for status, response in op["responses"].items():
                    if status[0] in "45" and "content" in response:
                        response["content"] = dict(_ERROR_JSON)
                if path in anonymous and {} not in op.get("security", [{}]):
                    op["security"].append({})  # a key or session is optional there
        return schema

    api.openapi = openapi  # type: ignore[method-assign]

    # Starlette wraps the last added outermost: the metrics see the hot path's responses too
    api.add_middleware(HotPath, current=current)
    api.add_middleware(RequestMetrics)

    # the guard runs as a dependency, before the body and the parameters are validated: a
    # caller without a key gets 401 (and the rate limit), never a field error list. The
    # security parameters only declare the two schemes in the OpenAPI (either one will do);
    # the guard reads the headers itself.
    async def anyone(request: Request, _key: Key = None, _session: Session = None) -> None:
        await guard(current(), request, None)

    async def client(request: Request, _key: Key = None, _session: Session = None) -> None:
        await guard(current(), request, "client")

    async def admin(request: Request, _key: Key = None, _session: Session = None) -> None:
        await guard(current(), request, "admin")

    async def acting(request: Request, _key: Key = None, _session: Session = None) -> str:
        return await operator(current(), request)

    Actor = Annotated[str, Depends(acting)]
    guards = (anyone, client, admin, acting)

    @api.get("/recommend", dependencies=[Depends(anyone)])
    async def recommend_json(request: Request, user_id: int = Query(ge=1, le=MAX_ID),
                             k: int = Query(10, ge=1, le=100)) -> RecommendResponse:
        logic = current()
        return logic.titled(await logic.recommend(request.scope["state"], user_id, k))

    @api.get("/recommend/{user_id}", response_class=PlainTextResponse,
             dependencies=[Depends(anyone)])
    async def recommend_plain(request: Request, user_id: int = Path(ge=1, le=MAX_ID),
                              k: int = Query(10, ge=1, le=100)) -> str:
        """The course's format: the ids, comma-separated."""
        logic = current()
        r = await logic.recommend(request.scope["state"], user_id, k)
        return ",".join(str(i) for i in r["items"])

    @api.post("/rate", status_code=202, dependencies=[Depends(client)],
              responses={503: _WAL_FULL})
    async def rate(event: RatingEvent) -> Accepted:
        """Accepted (202) once on disk in the replica's write-ahead log; in the lake once."""
        logic = current()
        return await logic.accept("events.rating", event)

    @api.post("/watch", status_code=202, dependencies=[Depends(client)],
              responses={503: _WAL_FULL})
    async def watch(event: WatchEvent) -> Accepted:
        """Accepted (202) once on disk in the replica's write-ahead log; in the lake once."""
        logic = current()
        return await logic.accept("events.watch", event)

    @api.post("/auth/signin", responses={
        401: {"model": ErrorBody, "description": "wrong account name or password",
              "content": _ERROR_JSON},
        429: _ERRORS[429] | {"description": "too many failed sign-ins or requests: retry "
                             "after the seconds in Retry-After"},
        503: {"model": ErrorBody, "description": "sign-in is not configured",
              "content": _ERROR_JSON}}, dependencies=[Depends(anyone)])
    async def sign_in(request: Request, body: SignInRequest) -> SignedIn:
        """A console session: its token goes in `Authorization: Bearer` on admin calls;
        a viewer's token reads, an operator's acts, named in the audit trail."""
        logic = current()
        return await asyncio.to_thread(logic.sign_in, body.account,
                                       body.password.get_secret_value(),
                                       request.client.host if request.client else None)

    @api.get("/health")
    async def health() -> HealthResponse:
        """Model versions per variant; writes degraded when events wait for the broker in any
        live replica's write-ahead log; accepted writes the lake does not hold yet."""
        return await current().health()

    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Prometheus text, summed over every ingress replica (pushed about once a second)."""
        return PlainTextResponse(await current().metrics_text(),
                                 media_type="text/plain; version=0.0.4")

    @api.get("/models", dependencies=[Depends(admin)])
    async def models() -> ModelsResponse:
        logic = current()
        return await asyncio.to_thread(logic.models)

    @api.post("/admin/promote", responses={409: _REFUSALS[409]})
    async def admin_promote(actor: Actor, body: PromoteRequest) -> AliasesResponse:
        """Verify, then make `version` production; variants pick it up on their next poll."""
        logic = current()
        return await asyncio.to_thread(logic.promote, body.variant, body.version, actor)

    @api.post("/admin/rollback", responses={409: _REFUSALS[409]})
    async def admin_rollback(actor: Actor, body: RollbackRequest) -> AliasesResponse:
        logic = current()
        return await asyncio.to_thread(logic.rollback, body.variant, actor)

    @api.post("/admin/diversity")
    async def admin_diversity(actor: Actor, body: DiversityRequest) -> RuntimeKnobs:
        """Change Model B's strengths on every B replica (applied within a second)."""
        logic = current()
        return await logic.set_diversity(body.model_dump(exclude_none=True), actor)

    @api.post("/admin/split", responses={k: _REFUSALS[k] for k in (409, 503)})
    async def admin_split(actor: Actor, body: SplitRequest) -> SplitResponse:
        """Change the experiment for every replica (through the shared state)."""
        logic = current()
        return await logic.set_split(body.split, body.salt, actor)

    @api.get("/admin/experiments", dependencies=[Depends(admin)])
    async def experiments_list() -> ExperimentsResponse:
        logic = current()
        return await asyncio.to_thread(logic.list_experiments)

    @api.get("/admin/experiments/{experiment_id}", responses={404: _REFUSALS[404]},
             dependencies=[Depends(admin)])
    async def experiment_show(experiment_id: str = ExperimentId) -> ExperimentView:
        """The experiment as its audit trail leaves it (arms, epochs, stop), and the trail."""
        logic = current()
        return await asyncio.to_thread(logic.show_experiment, experiment_id)

    @api.post("/admin/experiments", status_code=201, responses=_REFUSALS)
    async def experiment_start(actor: Actor, body: ExperimentSpec) -> ExperimentView:
        """Start an experiment over deployed variants (one at a time; ids never reused)."""
        logic = current()
        return await logic.start_experiment(body, actor)

    @api.post("/admin/experiments/{experiment_id}/weights", responses=_REFUSALS)
    async def experiment_weights(actor: Actor, body: WeightsRequest,
                                 experiment_id: str = ExperimentId) -> ExperimentView:
        """New weights for every arm: a new allocation epoch, on every replica."""
        logic = current()
        return await logic.set_weights(experiment_id, body.weights, actor)

    @api.post("/admin/experiments/{experiment_id}/arms", responses=_REFUSALS)
    async def experiment_add_arm(actor: Actor, body: AddArmRequest,
                                 experiment_id: str = ExperimentId) -> ExperimentView:
        """A deployed variant joins the running experiment (a new allocation epoch)."""
        logic = current()
        return await logic.add_arm(experiment_id, body.arm, body.weight, actor)

    @api.post("/admin/experiments/{experiment_id}/stop", responses=_REFUSALS)
    async def experiment_stop(actor: Actor, experiment_id: str = ExperimentId
                              ) -> ExperimentView:
        """Stop it: users go back to the default allocation."""
        logic = current()
        return await logic.stop_experiment(experiment_id, actor)

    @api.get("/admin/dlq", dependencies=[Depends(admin)])
    async def dlq_list(which: Annotated[DeadLetterFilter, Query()]
                       ) -> DeadLetterCounts:
        """Dead letters by source topic and reason (the error's first line)."""
        logic = current()
        return await asyncio.to_thread(logic.dead_letter_counts, which)

    @api.post("/admin/dlq/replay")
    async def dlq_replay(actor: Actor, body: DeadLetterFilter) -> Replayed:
        """Produce the matching dead letters back to their source topics (audited)."""
        logic = current()
        return await asyncio.to_thread(logic.replay_dead_letters, body, actor)

    @api.post("/admin/retrain", status_code=202)
    async def retrain_now(actor: Actor, body: RetrainRequestBody) -> RetrainRequested:
        """Ask the scheduler for a retrain on its next tick (audited); the Models page and
        `reco status` show its progress."""
        logic = current()
        return await asyncio.to_thread(logic.request_retrain, body.reason, actor)

    @api.get("/admin/quarantine", dependencies=[Depends(admin)])
    async def quarantine_list() -> Quarantine:
        """Every user the spam detectors or an operator quarantined, with the evidence."""
        logic = current()
        return await asyncio.to_thread(logic.quarantined)

    @api.post("/admin/quarantine/{user_id}/release", responses={404: _REFUSALS[404]})
    async def quarantine_release(actor: Actor, body: ReleaseRequest,
                                 user_id: int = Path(ge=1, le=MAX_ID)) -> QuarantineEntry:
        """The user's events count again from the next retrain (audited)."""
        logic = current()
        return await asyncio.to_thread(logic.release, user_id, body.reason, actor)

    @api.post("/admin/quarantine/{user_id}", responses={409: _REFUSALS[409]})
    async def quarantine_flag(actor: Actor, body: FlagRequest,
                              user_id: int = Path(ge=1, le=MAX_ID)) -> QuarantineEntry:
        """Quarantine the user by hand (audited); refused if quarantined already."""
        logic = current()
        return await asyncio.to_thread(logic.flag, user_id, body.reason, actor)

    return api


# This process's ingress logic (one Ingress replica per process). Kept in this importable
# module and reached through functions: Serve pickles `api` by value (its route closures
# too), and a function pickled by reference finds the module's one global in the replica.
_answering: list[IngressLogic] = []


def answer_with(logic: IngressLogic) -> None:
    """Make `logic` the one `api` answers with (the Ingress deployment, as it starts)."""
    _answering[:] = [logic]


def answering() -> IngressLogic:
    return _answering[0]


api = create_api(answering)
