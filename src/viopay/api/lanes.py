"""Lanes: the hottest device routes served without FastAPI's routing and dependency solving.

A fleet's requests are mostly charges and heartbeats (every terminal beats once a minute, busy
or idle), every terminal downloads the terminal-parameter chunks whenever its parameters
change (four of an activation's twelve requests), every terminal bootstraps when it starts,
and every terminal waiting to be claimed shows a pairing code and polls its status every five
seconds. FastAPI spent 4-11 % of a charge's worker
CPU and 15-17 % of a heartbeat's before the endpoint ran: matching the path through the
included routers, then solving the route's dependencies (the mount's, the runtime, the clock)
for every request (issue 10; side-by-side figures in docs/benchmarks.md). A lane answers
exactly one method and path: it calls the same mount dependency and the same endpoint the route
would, in the same order, and what they raise becomes problem+json through the app's own
exception handlers. The route stays declared and serves every request the lane does not match
(OpenAPI, 405 and its ``Allow``, a trailing slash), and :func:`mount_lanes` refuses to start an
app whose route no longer has the dependency its lane calls.

The middleware sits inside the request context (request id, body limit, access log, metrics),
as the router does; ``scope["route"]`` is set as FastAPI sets it, so the metrics' route label
is the route's template either way.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette._utils import get_route_path  # the path the router matches (root_path off)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from viopay.activation.attestation import token_headers
from viopay.activation.router import terminal_parameters
from viopay.api.devices import bootstrap, pairing_code, status
from viopay.deps import runtime_of
from viopay.devices.authn import bootstrap_headers, pairing_headers
from viopay.fleet.router import heartbeat
from viopay.ids import utcnow
from viopay.payments.router import create_charge
from viopay.payments.terminal_auth import signed_request

Serve = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Any], Awaitable[Response] | Response]


async def _charge(request: Request) -> Response:
    return await create_charge(request, await signed_request(request))


async def _heartbeat(request: Request) -> Response:
    signed = await signed_request(request)
    return await heartbeat(signed, runtime_of(request), utcnow())


async def _parameters_chunk(request: Request) -> Response:
    return await terminal_parameters(request, await token_headers(request), utcnow())


async def _status(request: Request) -> Response:
    return await status(request, await pairing_headers(request), utcnow())


async def _pairing_code(request: Request) -> Response:
    return await pairing_code(request, await pairing_headers(request), utcnow())


async def _bootstrap(request: Request) -> Response:
    return await bootstrap(request, await bootstrap_headers(request), utcnow())


@dataclass(frozen=True)
class Lane:
    """A route's endpoint, the mount dependency its lane calls first, and the lane."""

    endpoint: Callable[..., Any]
    mount_dependency: Callable[..., Any]
    serve: Serve


LANES = (
    Lane(create_charge, signed_request, _charge),
    Lane(heartbeat, signed_request, _heartbeat),
    Lane(terminal_parameters, token_headers, _parameters_chunk),
    Lane(status, pairing_headers, _status),
    Lane(bootstrap, bootstrap_headers, _bootstrap),
    Lane(pairing_code, pairing_headers, _pairing_code),
)


class LaneError(RuntimeError):
    """A lane's route is missing, or no longer authenticated by the dependency the lane calls."""


def mount_lanes(app: FastAPI, lanes: tuple[Lane, ...] = LANES) -> None:
    """Serve ``lanes`` ahead of the router, for their routes' method and path; call after the
    routes are mounted (:func:`viopay.api.mount_api`) and before the app serves."""
    found: dict[tuple[str, str], tuple[APIRoute, Serve]] = {}
    for lane in lanes:
        contexts = [c for c in iter_route_contexts(app.routes) if c.endpoint is lane.endpoint]
        route = contexts[0].original_route if len(contexts) == 1 else None
        if not isinstance(route, APIRoute) or contexts[0].path is None:
            raise LaneError(f"{lane.endpoint.__name__}: not mounted once as an API route")
        context, path = contexts[0], contexts[0].path
        dependencies = [d.dependency for d in context.dependencies]
        if dependencies != [lane.mount_dependency]:
            raise LaneError(
                f"{path}: authenticated by {dependencies}, its lane by "
                f"{lane.mount_dependency.__name__}"
            )
        for method in context.methods or ():
            found[(method, path)] = (route, lane.serve)
    app.add_middleware(LaneMiddleware, lanes=found, handlers=app.exception_handlers)


class LaneMiddleware:
    """Pure ASGI: a request whose method and path a lane serves goes to it, any other to the
    app. ``handlers`` is the app's exception handler mapping (read when an error is raised, so
    handlers installed after the middleware count)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        lanes: Mapping[tuple[str, str], tuple[APIRoute, Serve]],
        handlers: Mapping[Any, Handler],
    ) -> None:
        self.app = app
        self.lanes = lanes
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = (
            self.lanes.get((scope["method"], get_route_path(scope)))
            if scope["type"] == "http"
            else None
        )
        if lane is None:
            await self.app(scope, receive, send)
            return
        route, serve = lane
        scope["route"] = route
        request = Request(scope, receive, send)
        try:
            response = await serve(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Handler | None:
        """The app's handler for the nearest class of ``exc``, as Starlette's exception
        middleware looks it up: a handler for ``Exception`` itself is the server-error
        middleware's, so an exception no nearer handler takes goes on up (to the request
        context's 413 or 500), as it does from a route."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                break
            if cls in self.handlers:
                return self.handlers[cls]
        return None
