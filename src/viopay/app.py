"""create_app(settings): routers, error handlers and the lifespan (engine, cache, issuer)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import structlog
from cryptography.hazmat.backends import default_backend
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from viopay import __version__
from viopay.api import mount_api
from viopay.api.lanes import mount_lanes
from viopay.auth.issuer import OidcVerifier, load_embedded_issuer
from viopay.auth.oidc import OidcProvider
from viopay.errors import (
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServerBusy,
    ServiceUnavailable,
    ViopayError,
    problem_response,
)
from viopay.fleet.timer import FleetTimer
from viopay.keysets.service import configure_key_cache
from viopay.masterkeys.service import refresh_forever
from viopay.metrics import exposition, process_exited
from viopay.middleware import HeadAsGetMiddleware, RequestContextMiddleware, request_id_of
from viopay.openapi import Problem, declare_headers
from viopay.payments.processors import build_processor
from viopay.payments.recovery import RecoveryWorker, owner_id
from viopay.payments.recovery import interval_for as recovery_interval
from viopay.payments.terminal_auth import configure_memory
from viopay.portal import router as portal_router
from viopay.portal.rendering import compile_templates
from viopay.runtime import Runtime, build_runtime
from viopay.settings import Settings
from viopay.stalls import StallWatch
from viopay.webhooks import outbox
from viopay.webhooks.worker import DeliveryWorker

log = structlog.get_logger("viopay")


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> FastAPI:
    outbox.install()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        load_what_requests_need(app)  # first: if it fails, nothing is started yet
        size_terminal_caches(settings.terminal_cache_size)
        rt = runtime or build_runtime(settings)
        if settings.oidc_issuer:
            provider = OidcProvider(
                issuer=settings.oidc_issuer, jwks_refresh_seconds=settings.oidc_jwks_refresh_seconds
            )
            rt.oidc = OidcVerifier(provider=provider, audience=settings.oidc_audience)
        else:
            rt.issuer = await load_embedded_issuer(
                rt.sessions, rt.wrapper, issuer=settings.public_url, ttl=settings.token_ttl_seconds
            )
        app.state.runtime = rt
        app.state.processor = build_processor(settings, rt.sessions, rt.native)
        recovery = RecoveryWorker(
            rt, app.state.processor, interval=recovery_interval(settings.recovery_delay_seconds)
        )
        recovery.start()
        deliveries = DeliveryWorker(rt, owner=owner_id())
        deliveries.start()
        fleet = FleetTimer(rt, owner=owner_id())
        fleet.start()
        refresher = (
            asyncio.create_task(
                refresh_forever(
                    rt.sessions,
                    rt.keyring,
                    rt.key_source,
                    interval=settings.master_key_refresh_seconds,
                ),
                name="viopay-master-keys",
            )
            if rt.keyring is not None and rt.key_source is not None
            else None
        )
        log.info(
            "started", embedded=settings.embedded, cache="redis" if settings.redis_url else "memory"
        )
        freeze_startup_objects()
        stalls = None
        if settings.loop_stall_ms:
            stalls = StallWatch(asyncio.get_running_loop(), threshold_ms=settings.loop_stall_ms)
            stalls.start()
        try:
            yield
        finally:
            if stalls is not None:
                stalls.stop()
            await fleet.stop()
            await deliveries.stop()
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            await recovery.stop()
            await rt.close()
            process_exited()

    app = FastAPI(
        title="Viopay POS platform",
        version=__version__,
        description="Device activation, key delivery and card payments for POS terminals (wire protocol v1).",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks: off, as no provider is configured (our metrics are
        # /metrics, our logs structlog's); left on, every request asks the global providers
        # whether one was set since (~1 % of a request's CPU, docs/benchmarks.md)
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    _install_error_handlers(app)
    mount_api(app)  # each router under its auth level's dependency (viopay.api)
    # Middleware added later runs earlier: the request context, HEAD as GET, then the lanes
    mount_lanes(
        app
    )  # the charge, the heartbeat and the chunks ahead of the router (viopay.api.lanes)
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(portal_router)  # cookie sessions of its own (docs/portal.md)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, media_type = exposition()
        return Response(body, media_type=media_type)

    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    return app


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def load_what_requests_need(app: FastAPI) -> None:
    """Import and build at start-up what the first requests would otherwise make on the event
    loop, where every request in flight waits for it: anyio's asyncio backend (the first request
    with a dependency that yields; a 41.9 ms stall in a benchmark run), cryptography's OpenSSL
    backend (the first token signed), the portal's templates (each page's first view) and the
    OpenAPI document (the first ``/openapi.json`` or ``/docs``: ~190 ms). Runs on the loop
    (anyio asks it which backend to load). ``tests/test_lazy_imports.py`` serves a server's
    first day and finds no import after start-up."""
    anyio.get_cancelled_exc_class()
    default_backend()
    compile_templates()
    app.openapi()


def size_terminal_caches(terminals: int) -> None:
    """What a process keeps per terminal between requests (``VIOPAY_TERMINAL_CACHE_SIZE``): the
    authentication row of the remembered charge and heartbeat paths and the unwrapped keys.
    Past it, the least recently seen terminal's next request reads them again."""
    configure_memory(terminals)
    configure_key_cache(terminals)


@functools.cache
def freeze_startup_objects() -> None:
    """Move everything made at start-up (modules, the ORM's mappers, FastAPI's routes, compiled
    statements) out of the cyclic garbage collector's reach (``gc.freeze``): the collections
    that requests trigger then walk only the objects requests made, not the whole process.
    Measured over 800 charges (gc.callbacks): 0.33 ms of collection per charge before, 0.04
    after (one full collection of the whole heap took most of it). Once per process: a process
    that starts many apps (the tests) freezes only the first (``functools.cache``)."""
    gc.collect()
    gc.freeze()


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route takes on the path of ``scope`` (the ``Allow`` of a 405), HEAD
    wherever GET (the routes are asked, so included routers count too)."""
    methods = {
        method
        for method in _METHODS
        if any(
            route.matches({**scope, "method": method})[0] is Match.FULL
            for route in app.router.routes
        )
    }
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _install_error_handlers(app: FastAPI) -> None:
    def rid(request: Request) -> str:
        return request_id_of(request.scope)

    @app.exception_handler(ViopayError)
    async def domain_error(request: Request, exc: ViopayError) -> Response:
        return problem_response(exc, rid(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error: ViopayError
        if exc.status_code == 405:
            error = MethodNotAllowed(allowed_methods(app, request.scope))
        elif exc.status_code == 404:
            error = NotFound("no such path")
        else:
            error = InvalidRequest(str(exc.detail))
        return problem_response(error, rid(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        if exc.errors() and all(e["loc"][0] == "path" for e in exc.errors()):
            return problem_response(NotFound("no such resource"), rid(request))
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]),
                "message": e["msg"],
            }
            for e in exc.errors()
        ]
        return problem_response(
            InvalidRequest("the request has invalid members", errors=errors), rid(request)
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(OSError)
    @app.exception_handler(TimeoutError)
    # asyncpg's own, from the statements viopay.payments.native sends it directly
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.exceptions.OperatorInterventionError)
    async def unavailable(request: Request, exc: Exception) -> Response:
        log.warning(
            "backing service unavailable", error=type(exc).__name__, request_id=rid(request)
        )
        return problem_response(ServiceUnavailable(), rid(request))

    @app.exception_handler(PoolTimeout)
    async def busy(request: Request, exc: PoolTimeout) -> Response:
        """No pooled database connection came free in time (a burst past what the process can
        serve): 503 with Retry-After, never a 500. A payment it interrupted after its intent was
        recorded is finished by recovery (§4.7), as after a crash."""
        log.warning("database pool busy", request_id=rid(request))
        return problem_response(
            ServerBusy("no database connection came free in time"), rid(request)
        )

    async def rolled_back(request: Request, sqlstate: str) -> Response:
        """PostgreSQL rolled the transaction back to end a conflict with another one (class 40:
        a deadlock, a serialization failure): nothing of it was applied, and the same request
        again is safe (a payment whose intent was committed before is finished by recovery,
        §4.7). 503 with Retry-After, never a 500."""
        log.warning("transaction rolled back", sqlstate=sqlstate, request_id=rid(request))
        return problem_response(
            ServerBusy("a conflicting request; nothing was changed"), rid(request)
        )

    @app.exception_handler(asyncpg.PostgresError)
    async def native_db_error(request: Request, exc: asyncpg.PostgresError) -> Response:
        if isinstance(exc, asyncpg.exceptions.TransactionRollbackError):
            return await rolled_back(request, exc.sqlstate)
        log.error("database error", error=type(exc).__name__, request_id=rid(request))
        return problem_response(InternalError(), rid(request))

    @app.exception_handler(DBAPIError)
    async def db_error(request: Request, exc: DBAPIError) -> Response:
        if exc.connection_invalidated:
            return await unavailable(request, exc)
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
        if sqlstate.startswith("40"):
            return await rolled_back(request, sqlstate)
        log.error("database error", error=type(exc.orig).__name__, request_id=rid(request))
        return problem_response(InternalError(), rid(request))


def _openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema()
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for status, response in list(operation.get("responses", {}).items()):
                content = response.get("content", {})
                if status.startswith(("4", "5")) and "application/json" in content:
                    content.pop("application/json")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            defs = body.get("schema", {}).pop("$defs", None)
            if defs:
                components.update(defs)
    declare_headers(schema, pairing_signed=settings.pairing_signature == "required")
    app.openapi_schema = schema
    return schema
