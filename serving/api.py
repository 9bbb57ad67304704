"""The HTTP API (FastAPI): routes, API-key scopes, error bodies, metrics. OpenAPI at /docs.

`make_api()` builds the app; whoever hosts it (the Ray Serve ingress, or uvicorn) calls
`attach(service, keys)` first. The state lives in this module, not in `app.state`, because Ray
Serve ships a pickled copy of the app to each replica: one ingress replica per process.
Every error is a JSON body `{"error": "..."}` with a 4xx (or 503 while not ready) status.
A graceful stop (SIGTERM or Ctrl-C on uvicorn, a replica told to stop on Ray: both run the
app's lifespan shutdown) closes the service, which seals this process's event-log segment.
"""

import asyncio
import contextlib
from typing import Annotated

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from recstack import __version__
from recstack.errors import RecstackError
from recstack.serving import metrics, model_watch, schemas
from recstack.serving.auth import APP, MODELS, PRIVACY, ApiKeys, key_id
from recstack.serving.config import RateLimit
from recstack.serving.http_limits import LimitAndTime
from recstack.serving.model_slots import UnknownModel
from recstack.serving.rate_limit import KeyRateLimiter, RateLimited
from recstack.serving.service import NotFound, RecommendService
from recstack.serving.store.base import StoreUnavailable
from recstack.serving.timing import stage, watch_gc

MAX_BODY_BYTES = 1 << 20  # 1 MiB: larger bodies get 413 before they are read
UserId = Annotated[str, Path(min_length=1, max_length=128)]
_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer <key>`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
_ERRORS = {  # every error status a route can answer, each with the `{"error": ...}` body
    400: {"model": schemas.ErrorBody, "description": "request body that is not JSON"},
    401: {"model": schemas.ErrorBody, "description": "missing or unknown API key"},
    403: {"model": schemas.ErrorBody, "description": "the key lacks this endpoint's scope"},
    408: {"model": schemas.ErrorBody, "description": "request body stopped arriving"},
    413: {"model": schemas.ErrorBody, "description": "request body over 1 MiB"},
    422: {"model": schemas.ErrorBody, "description": "invalid request"},
    429: {"model": schemas.ErrorBody, "description": "over the key's rate limit (Retry-After)"},
    503: {"model": schemas.ErrorBody, "description": "not ready (model not loaded, store down)"},
}
_BAD_ARTIFACT = {
    400: {
        "model": schemas.ErrorBody,
        "description": "body not JSON, or a missing or corrupt artifact",
    }
}
_PROMETHEUS_TEXT = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
_NOT_FOUND = {404: {"model": schemas.ErrorBody, "description": "unknown item id"}}


_STATE: dict = {}


def attach(service: RecommendService, keys: ApiKeys, rate_limit: RateLimit | None = None) -> None:
    """Serve `service`, guarded by `keys` (and a rate limit per key), from this process's app."""
    _STATE["service"], _STATE["keys"] = service, keys
    _STATE["limiter"] = KeyRateLimiter(rate_limit.per_key) if rate_limit else None
    watch_gc()


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _granted(creds: HTTPAuthorizationCredentials | None) -> set[str]:
    """The scopes of the request's key (empty: no key or an unknown one)."""
    return _keys().scopes_of(creds.credentials) if creds and creds.credentials else set()


def _scope(scope: str):
    async def check(creds: Credentials) -> None:  # async: FastAPI runs a sync one in a thread
        if creds is None or not creds.credentials:
            raise HttpError(401, "missing API key: send `Authorization: Bearer <key>`")
        granted = _granted(creds)
        if not granted:
            raise HttpError(401, "unknown API key")
        if scope not in granted:
            raise HttpError(403, f"this endpoint needs a key with the {scope!r} scope")
        limiter = _STATE.get("limiter")
        if limiter is not None:
            await limiter.hit(key_id(creds.credentials))

    return Depends(check)


# Routes and dependencies reach the state only through these module-level functions: Ray pickles
# the app's closures by value (with a copy of any dict they name) but module functions by name.
def _service(request: Request) -> RecommendService:
    return _STATE["service"]


def _keys() -> ApiKeys:
    _STATE["keys"] = _STATE["keys"].current()  # a rotated keys file takes effect here
    return _STATE["keys"]


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _install_handlers(api: FastAPI) -> None:
    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    handlers = {
        HttpError: lambda exc: error(exc.status, str(exc)),
        RateLimited: lambda exc: JSONResponse(
            {"error": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after_s)}
        ),
        HTTPException: lambda exc: JSONResponse(  # FastAPI's own: 404 route, 405, 400 body
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        ),
        RequestValidationError: lambda exc: error(422, _validation_message(exc)),
        NotFound: lambda exc: error(404, str(exc)),
        UnknownModel: lambda exc: error(503, f"{exc}; check the serve config's models"),
        StoreUnavailable: lambda exc: error(503, f"online store unavailable: {exc}"),
        RecstackError: lambda exc: error(400, str(exc)),
    }
    for exc_class, make in handlers.items():
        api.add_exception_handler(exc_class, lambda _req, exc, make=make: make(exc))


@contextlib.asynccontextmanager
async def _lifespan(_api: FastAPI):
    yield
    service = _STATE.pop("service", None)
    if service is not None:
        await service.close()


def make_api() -> FastAPI:
    api = FastAPI(
        lifespan=_lifespan,
        title="recstack",
        version=__version__,
        description="Recommendations over HTTP: retrieval + ranking, real-time history, experiments.",
    )
    _install_handlers(api)
    api.add_middleware(LimitAndTime, max_body_bytes=MAX_BODY_BYTES)
    app_scope, models_scope, privacy_scope = _scope(APP), _scope(MODELS), _scope(PRIVACY)

    @api.post(
        "/v1/recommend",
        dependencies=[app_scope],
        responses=_ERRORS,
        response_model=schemas.RecommendResponse,
    )
    async def recommend(body: schemas.RecommendRequest, request: Request) -> Response:
        # the hot path: serialise the model once (FastAPI would validate it again first)
        response = await _service(request).recommend(body)
        with stage("serialise"):
            return Response(response.model_dump_json(), media_type="application/json")

    @api.get("/v1/similar/{item_id}", dependencies=[app_scope], responses=_ERRORS | _NOT_FOUND)
    async def similar(
        request: Request,
        item_id: Annotated[str, Path(min_length=1, max_length=128)],
        k: Annotated[int, Query(ge=1, le=schemas.MAX_K)] = 10,
    ) -> schemas.SimilarResponse:
        return await _service(request).similar(item_id, k)

    @api.post("/v1/events", status_code=202, dependencies=[app_scope], responses=_ERRORS)
    async def events(body: schemas.EventsRequest, request: Request) -> schemas.EventsResponse:
        return await _service(request).events(body)

    @api.put("/v1/users/{user_id}/consent", dependencies=[app_scope], responses=_ERRORS)
    async def consent(user_id: UserId, body: schemas.Consent, request: Request) -> schemas.Consent:
        return await _service(request).set_consent(user_id, body)

    @api.post("/v1/users/{user_id}/onboarding", dependencies=[app_scope], responses=_ERRORS)
    async def onboarding(
        user_id: UserId, body: schemas.Onboarding, request: Request
    ) -> schemas.OnboardingResponse:
        return await _service(request).onboarding(user_id, body)

    @api.get("/v1/users/{user_id}/data", dependencies=[privacy_scope], responses=_ERRORS)
    async def user_data(user_id: UserId, request: Request) -> schemas.UserData:
        return await _service(request).user_data(user_id)

    @api.delete("/v1/users/{user_id}", dependencies=[privacy_scope], responses=_ERRORS)
    async def erase(user_id: UserId, request: Request) -> schemas.ErasureResponse:
        return await _service(request).erase(user_id)

    @api.post(
        "/v1/admin/models",
        dependencies=[models_scope],
        responses=_ERRORS | _BAD_ARTIFACT,
        status_code=202,
    )
    async def update_models(
        body: schemas.ModelUpdate, request: Request
    ) -> schemas.ModelUpdateResponse:
        return await _service(request).update_models(body)

    @api.get("/v1/experiments/report", dependencies=[models_scope], responses=_ERRORS)
    async def experiments_report(request: Request) -> dict:
        return await _service(request).experiment_report()

    @api.get(  # errors in JSON like every route; the exposition in Prometheus' text format
        "/metrics",
        dependencies=[models_scope],
        response_class=Response,
        responses=_ERRORS | _PROMETHEUS_TEXT,
    )
    async def prometheus() -> Response:  # reading every process's files: off the loop
        text = await asyncio.to_thread(metrics.exposition)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @api.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.get("/v1/admin/models", dependencies=[models_scope], responses=_ERRORS)
    async def served_models(request: Request) -> schemas.ServedModels:
        """The published model spec, and what every replica serves: each replica (uvicorn
        worker, Ray replica) records its versions in the online store at start, on a swap and
        every 5 s; those seen in the last 30 s are listed. A replica that just started can be
        missing for about a second (two records written at once: the replica writes its own
        again), and a dead one stays listed until its record is 30 s old."""
        return await asyncio.to_thread(model_watch.served_models, _service(request).store)

    @api.get(
        "/readyz", responses={503: {"model": schemas.ErrorBody}}, response_model_exclude_none=True
    )
    async def readyz(request: Request, creds: Credentials) -> schemas.Readiness:
        """Ready: models loaded on both sides with one vocab, store reachable. A models key
        also gets what every replica serves (as GET /v1/admin/models), or the problems."""
        service = _service(request)
        problems = await service.readiness()
        operator = MODELS in _granted(creds)
        if not problems:
            replicas = None
            if operator:
                with contextlib.suppress(StoreUnavailable):
                    served = await asyncio.to_thread(model_watch.served_models, service.store)
                    replicas = served["replicas"]
            return schemas.Readiness(status="ready", replicas=replicas)
        if operator:
            info = await service.backend.info()
            started = sorted({side.get("started", "") for side in info.values()} - {""})
            message = "; ".join([*problems, *(f"models from {s}" for s in started)])
        else:  # store hosts, artifact paths and error text are for operators only
            message = f"not ready ({len(problems)} problem(s)); a models key shows which"
        return JSONResponse({"error": message}, status_code=503)

    # Build the schema now and serve that, not one rebuilt from Ray Serve's pickled copy of the
    # routes: FastAPI tells "no example" by the identity of a sentinel, which unpickling loses
    # (every parameter and body of the served schema got `"example": {}`).
    schema = api.openapi()
    api.openapi = lambda: schema
    return api
