"""The HTTP API, mounted in one place: one router per authentication level of PROTOCOL §2, each
authenticated at mount, so that no endpoint can forget its authentication (a test walks every
route and checks it carries its level's dependency).

The routers that compose several domains (devices, merchants, events) live beside this module;
each domain keeps its own routes (activation, payments, parameters, configuration, auth) without
authentication of their own: the level they are mounted at says who may call them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI

from viopay.activation.attestation import attested_device, token_headers
from viopay.activation.router import attest_router, chunk_router, token_router
from viopay.api import devices, events, merchants
from viopay.auth.deps import admin_principal, bearer_principal, merchant_session
from viopay.auth.router import admin_router as client_admin_router
from viopay.auth.router import bearer_router
from viopay.auth.router import router as token_endpoints
from viopay.configuration.router import config_schema_router
from viopay.devices.authn import attest_headers, bootstrap_headers, pairing_headers
from viopay.fleet.router import pos_router as heartbeat_router
from viopay.health import router as health_router
from viopay.parameters.router import parameters_admin_router
from viopay.payments import router as payments
from viopay.payments.terminal_auth import signed_request
from viopay.webhooks.router import router as webhooks_router

# (name, the dependency that authenticates the level, its routers); None: public.
LEVELS: tuple[tuple[str, Callable[..., Any] | None, tuple[APIRouter, ...]], ...] = (
    # First: the charge routes are the hottest, and a level's routes are matched in turn.
    ("HMAC charge headers (§2.4)", signed_request, (payments.pos_router, heartbeat_router)),
    ("public", None, (health_router, token_endpoints, config_schema_router)),
    (
        "bootstrap: activation headers only, any version (§2.1); the endpoint reads the device",
        bootstrap_headers,
        (devices.bootstrap_router,),
    ),
    # Pairing codes and status polls: the headers and version at mount, the device and the
    # signature checked by the endpoint, in one statement on PostgreSQL (viopay.devices.quick).
    (
        "activation + signature headers only (§2.1 v1.1); the endpoint checks device and signature",
        pairing_headers,
        (devices.pairing_router,),
    ),
    # The signature's headers at mount, the device and the signature checked by the endpoint, in
    # one statement on PostgreSQL (viopay.devices.quick).
    (
        "attestation signature headers only (§2.2); the endpoint checks device and signature",
        attest_headers,
        (attest_router,),
    ),
    ("attestation token (§2.3)", attested_device, (token_router,)),
    # The chunks: the token's headers at mount, the token itself checked by the endpoint, on a
    # context this process remembered or afresh (viopay.activation.chunks).
    ("attestation token, chunk downloads (§2.3)", token_headers, (chunk_router,)),
    ("Bearer, any role (§2.5)", bearer_principal, (bearer_router,)),
    (
        "Bearer, merchant session (§2.5)",
        merchant_session,
        (
            devices.claim_router,
            devices.merchant_router,
            merchants.merchant_router,
            events.router,
            payments.merchant_router,
            webhooks_router,
        ),
    ),
    (
        "Bearer, admin (§2.5)",
        admin_principal,
        (
            devices.admin_router,
            merchants.admin_router,
            client_admin_router,
            parameters_admin_router,
        ),
    ),
)


def mount_api(app: FastAPI) -> None:
    """Every API route on ``app``, each router included once, directly, under its level's
    authenticating dependency.

    Directly, not through a router per level: FastAPI matches an included router by walking
    its routes, and again to dispatch, at every depth, so each level of nesting multiplied the
    cost of reaching the routes mounted last (cProfile of 25 activations, per request: ~89
    calls of FastAPI's ``_get_routes_version`` and ~27 of ``_match`` with three levels, ~8 of
    each with one).
    """
    for _name, authenticate, routers in LEVELS:
        dependencies = [Depends(authenticate)] if authenticate else None
        for router in routers:
            app.include_router(router, dependencies=dependencies)
