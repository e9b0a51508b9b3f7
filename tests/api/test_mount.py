"""Every API route is authenticated at mount (issue 15): the dependency of its PROTOCOL §2 level
comes first in its effective dependencies, whatever the route itself declares, and only an
explicit list of routes is public."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from viopay.activation.attestation import attested_device, token_headers
from viopay.api import LEVELS
from viopay.app import create_app
from viopay.auth.deps import admin_principal, bearer_principal, merchant_session
from viopay.devices.authn import attest_headers, bootstrap_headers, pairing_headers
from viopay.payments.terminal_auth import signed_request
from viopay.settings import Settings

PUBLIC = {
    "/healthz",
    "/readyz",
    "/client/session",
    "/.well-known/jwks.json",
    "/pos/config/schema",
}


def expected_level(path: str) -> Callable[..., Any] | None:
    """The §2 level a path belongs to, written out by hand from PROTOCOL.md."""
    if path in PUBLIC:
        return None
    if path == "/session/initiate":
        return bearer_principal
    if path.startswith("/admin/"):
        return admin_principal
    if path.startswith("/merchant/") or path == "/pos/claim":
        return merchant_session
    if path == "/pos/bootstrap":
        return bootstrap_headers  # the device read by the endpoint (viopay.devices.quick)
    if path in ("/pos/pairing-code", "/pos/status"):
        return pairing_headers  # the device and signature checked by the endpoint (viopay.devices.quick)
    if path == "/pos/attest":
        return attest_headers  # the device and signature checked by the endpoint
    if path in ("/pos/keys", "/pos/config", "/pos/activate"):
        return attested_device
    if path == "/pos/terminal-parameters":
        return token_headers  # the token is checked by the endpoint (viopay.activation.chunks)
    if path.startswith("/pos/charge") or path == "/pos/heartbeat":
        return signed_request
    raise AssertionError(f"{path}: no §2 level known for it; add it to this test and to LEVELS")


def api_routes(app: FastAPI) -> list[tuple[str, list[Callable[..., Any]]]]:
    found = []
    for route in iter_route_contexts(app.routes):
        path = route.path
        if not getattr(route, "include_in_schema", False) or path is None:
            continue  # the portal (cookie sessions, its own tests), /metrics, the docs
        found.append((path, [d.dependency for d in route.dependencies]))
    return found


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(Settings())


def test_every_route_is_authenticated_at_mount_by_its_level(app: FastAPI) -> None:
    routes = api_routes(app)
    assert len(routes) >= 30  # the walk sees the nested routers, not just their mounts
    for path, dependencies in routes:
        level = expected_level(path)
        if level is None:
            assert dependencies == [], f"{path} is public and must stay so"
        else:
            assert dependencies and dependencies[0] is level, f"{path}: {dependencies}"


def test_each_level_is_declared_once_and_mounts_its_routers() -> None:
    names = [name for name, _, _ in LEVELS]
    assert len(names) == len(set(names))
    routers = [id(router) for _, _, level_routers in LEVELS for router in level_routers]
    assert len(routers) == len(set(routers)), "a router mounted at two levels"


def _sub_dependencies(dependant: Any) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _sub_dependencies(sub)


def _runs_on_the_loop(call: Callable[..., Any]) -> bool:
    """What FastAPI awaits on the event loop; a plain function (or generator) it runs in its
    thread pool instead: a thread hop per request, for code that does no blocking I/O here."""
    return any(
        inspect.iscoroutinefunction(c) or inspect.isasyncgenfunction(c)
        for c in (call, getattr(call, "__call__", None))  # noqa: B004 - a dependency instance
    )


def test_no_endpoint_or_dependency_runs_in_the_thread_pool(app: FastAPI) -> None:
    checked, threaded = 0, []
    for context in iter_route_contexts(app.routes):
        if not isinstance(context.route, APIRoute):
            continue  # FastAPI's own /openapi.json and /docs pages
        checked += 1
        # the effective route's: the mount's dependencies (viopay.api) included
        calls = [context.endpoint, *_sub_dependencies(context.dependant)]
        threaded += [
            f"{context.path}: {getattr(c, '__qualname__', c)}"
            for c in calls
            if c is not None and not _runs_on_the_loop(c)
        ]
    assert checked >= 80  # the API's routes and the portal's
    assert threaded == []


def test_the_levels_that_read_nothing_at_mount_serve_only_endpoints_that_authenticate(
    app: FastAPI,
) -> None:
    """A level whose dependency checks headers only leaves the device (and the signature or
    token) to the endpoint: each endpoint mounted there does it (viopay.devices.quick,
    viopay.activation.chunks), and a new one must be added here after it does too."""
    headers_only = {bootstrap_headers, pairing_headers, attest_headers, token_headers}
    served: dict[str, set[str]] = {}
    for context in iter_route_contexts(app.routes):
        if not isinstance(context.route, APIRoute):
            continue  # FastAPI's own /openapi.json and /docs pages
        dependencies = [d.dependency for d in context.dependencies]
        if dependencies and dependencies[0] in headers_only and context.endpoint is not None:
            served.setdefault(dependencies[0].__name__, set()).add(context.endpoint.__name__)
    assert served == {
        "bootstrap_headers": {"bootstrap"},
        "pairing_headers": {"pairing_code", "status"},
        "attest_headers": {"attest"},
        "token_headers": {"terminal_parameters"},
    }
