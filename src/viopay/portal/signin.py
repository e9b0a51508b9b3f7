"""Signing in and out, and picking the merchant to act for (``/session/initiate``).

- Keycloak configured: the OpenID Connect authorization-code flow with PKCE.
- Embedded default: a form for users made by ``viopay user create`` (email + password) and for
  API clients (client id + secret). Either way the embedded issuer issues the token, and the
  portal keeps the principal the API would see for it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from viopay.auth.clients import authenticate_client
from viopay.auth.issuer import ADMIN_ROLE, Principal
from viopay.auth.users import authenticate_user
from viopay.cache import Cache, Reservation, Window
from viopay.db import transaction
from viopay.deps import RuntimeDep
from viopay.errors import Forbidden, RateLimited, ServiceUnavailable, Unauthorized
from viopay.ids import utcnow
from viopay.portal import rendering
from viopay.portal.membership import act_for, memberships
from viopay.portal.oidc import display_name, pkce_pair
from viopay.portal.session import (
    SignedIn,
    forget_signed_in,
    load_signed_in,
    new_token,
    session_end,
    store_signed_in,
)
from viopay.portal.web import (
    HOME,
    PREFIX,
    Form,
    PortalRoute,
    Redirect,
    SignInRequired,
    State,
    Who,
    field,
    oidc_client,
    runtime_of,
    safe_next,
)
from viopay.runtime import Runtime

router = APIRouter(prefix=PREFIX, route_class=PortalRoute, include_in_schema=False)

# Failed sign-ins: (scope, limit, window seconds). Past a limit, that scope waits.
SIGNIN_LIMITS = (("account", 10, 900.0), ("address", 50, 900.0))
OIDC_PENDING = timedelta(minutes=10)
_UNVERIFIED = "The identity provider's answer could not be verified. Sign in again."


# --- the sign-in page -------------------------------------------------------------------------


def _signin_page(
    request: Request,
    *,
    mode: str,
    next_url: str,
    error: str | None = None,
    identifier: str = "",
    status: int = 200,
) -> Response:
    settings = runtime_of(request).settings
    return rendering.render(
        request,
        "signin.html",
        {
            "mode": mode,
            "next": next_url,
            "error": error,
            "identifier": identifier,
            "sso": bool(settings.oidc_issuer),
            "sso_ready": oidc_client(request) is not None,
        },
        status=status,
    )


@router.get("/signin")
async def signin_page(request: Request, runtime: RuntimeDep, state: State) -> Response:
    if state.sid and await load_signed_in(runtime.cache, runtime.wrapper, state.sid):
        raise Redirect(HOME)
    mode = "client" if request.query_params.get("as") == "client" else "user"
    return _signin_page(request, mode=mode, next_url=safe_next(request.query_params.get("next")))


def _limit_windows(request: Request, identifier: str) -> list[Window]:
    account = hashlib.sha256(identifier.strip().lower().encode()).hexdigest()[:32]
    address = request.client.host if request.client else "unknown"
    names = {
        "account": f"rl:portal-signin:account:{account}",
        "address": f"rl:portal-signin:address:{address}",
    }
    return [Window(names[scope], limit, window) for scope, limit, window in SIGNIN_LIMITS]


async def _reserve_failure(cache: Cache, windows: list[Window], now: float) -> Reservation:
    """Count this sign-in as failed before checking it (atomically with the limit check, so a
    burst cannot slip past); the caller takes it back when it succeeds."""
    reservation = await cache.window_reserve(windows, now=now)
    if reservation.wait:
        raise RateLimited("too many failed sign-ins", retry_after=int(reservation.wait) + 1)
    return reservation


@router.post("/signin")
async def signin(request: Request, runtime: RuntimeDep, state: State, form: Form) -> Response:
    mode = "client" if field(form, "mode") == "client" else "user"
    next_url = safe_next(field(form, "next"))
    if runtime.issuer is None:  # Keycloak is configured: people sign in there
        return _signin_page(
            request,
            mode=mode,
            next_url=next_url,
            status=400,
            error="Sign in with your organisation's single sign-on.",
        )
    identifier = field(form, "client_id" if mode == "client" else "email").strip()
    secret = field(form, "client_secret" if mode == "client" else "password")
    if not identifier or not secret:
        return _signin_page(
            request,
            mode=mode,
            next_url=next_url,
            identifier=identifier,
            status=400,
            error="Enter your "
            + ("client ID and secret." if mode == "client" else "email and password."),
        )
    now = utcnow()
    try:
        reservation = await _reserve_failure(
            runtime.cache, _limit_windows(request, identifier), now.timestamp()
        )
        try:
            principal, name = await _authenticate(
                runtime, mode=mode, identifier=identifier, secret=secret, now=now
            )
        except Unauthorized:
            raise  # a failed sign-in: it stays counted
        except BaseException:
            await runtime.cache.window_release(reservation)
            raise
        await runtime.cache.window_release(reservation)
    except RateLimited as exc:
        minutes = max(1, round(int(exc.headers["Retry-After"]) / 60))
        return _signin_page(
            request,
            mode=mode,
            next_url=next_url,
            identifier=identifier,
            status=429,
            error=f"Too many failed sign-ins. Try again in about {minutes} minute{'s' * (minutes > 1)}.",
        )
    except Unauthorized:
        wrong = "client ID or secret" if mode == "client" else "email or password"
        return _signin_page(
            request,
            mode=mode,
            next_url=next_url,
            identifier=identifier,
            status=401,
            error=f"The {wrong} is incorrect.",
        )
    until = session_end(principal, started_at=now, now=now)
    who = SignedIn(principal, name, started_at=now, until=until)
    return await _begin(request, runtime, state, who, next_url=next_url, now=now)


async def _authenticate(
    runtime: Runtime, *, mode: str, identifier: str, secret: str, now: datetime
) -> tuple[Principal, str]:
    """The principal the API would see for a token of these credentials, and its display name."""
    issuer = runtime.issuer
    assert issuer is not None
    async with transaction(runtime.sessions) as db:
        if mode == "client":
            client = await authenticate_client(
                db, wrapper=runtime.wrapper, client_id=identifier, client_secret=secret
            )
            subject, kind, roles, name = (
                client.client_id,
                "client",
                [ADMIN_ROLE] if client.admin else [],
                client.client_id,
            )
        else:
            user = await authenticate_user(db, email=identifier, password=secret)
            subject, kind, roles, name = user.user_id, "user", [], user.email
    token, _ = issuer.issue(subject=subject, roles=roles, kind=kind, now=now)
    return await issuer.verify(token), name


async def _begin(
    request: Request, runtime: Runtime, state: Any, who: SignedIn, *, next_url: str, now: datetime
) -> Response:
    """Signed in: a new portal session (new id, new CSRF token); straight in with one merchant."""
    sid = new_token()
    await store_signed_in(runtime.cache, runtime.wrapper, sid=sid, signed_in=who, now=now)
    state.rotate(sid)
    request.state.portal_who = who
    mine = await memberships(runtime, who.principal.subject)
    if len(mine) == 1:
        await act_for(runtime, sid=sid, who=who, merchant_id=mine[0].merchant_id, now=now)
        return RedirectResponse(next_url, status_code=303)
    return RedirectResponse(f"{PREFIX}/merchants?next={quote(next_url, safe='')}", status_code=303)


# --- OpenID Connect ---------------------------------------------------------------------------


@router.get("/auth/login")
async def oidc_login(request: Request, state: State) -> Response:
    oidc = oidc_client(request)
    if oidc is None:
        raise Redirect(f"{PREFIX}/signin")
    verifier, challenge = pkce_pair()
    pending = {
        "state": new_token(),
        "nonce": new_token(),
        "verifier": verifier,
        "next": safe_next(request.query_params.get("next")),
        "at": str(int(utcnow().timestamp())),
    }
    url = await oidc.authorization_url(
        state=pending["state"], nonce=pending["nonce"], code_challenge=challenge
    )
    state.oidc, state.dirty = pending, True
    return RedirectResponse(url, status_code=303)


@router.get("/auth/callback")
async def oidc_callback(request: Request, runtime: RuntimeDep, state: State) -> Response:
    oidc, pending = oidc_client(request), state.oidc
    state.oidc, state.dirty = None, True  # single use, whatever happens next
    params = request.query_params
    now = utcnow()
    if (
        oidc is None
        or runtime.oidc is None
        or pending is None
        or not secrets.compare_digest(
            params.get("state", "").encode(), str(pending["state"]).encode()
        )
        or now.timestamp() - int(pending["at"]) > OIDC_PENDING.total_seconds()
    ):
        raise SignInRequired(
            "That sign-in attempt expired or was not started here. Sign in again.", come_back=False
        )
    if "error" in params or not params.get("code"):
        raise SignInRequired(
            "The sign-in was cancelled or refused by the identity provider.", come_back=False
        )
    try:
        tokens = await oidc.exchange(code=params["code"], code_verifier=pending["verifier"])
        principal = await runtime.oidc.verify(tokens.access_token)
        claims = await oidc.id_claims(tokens.id_token or "", nonce=pending["nonce"])
    except Unauthorized:
        raise SignInRequired(_UNVERIFIED, come_back=False) from None
    if claims.get("sub") != principal.subject:
        raise SignInRequired(_UNVERIFIED, come_back=False)
    refresh_in = tokens.refresh_expires_in if tokens.refresh_token else None
    who = SignedIn(
        principal,
        display_name(claims),
        started_at=now,
        until=session_end(
            principal,
            started_at=now,
            now=now,
            refresh_expires_in=refresh_in,
            refreshable=bool(tokens.refresh_token),
        ),
        refresh_token=tokens.refresh_token,
        id_token=tokens.id_token,
    )
    return await _begin(request, runtime, state, who, next_url=safe_next(pending["next"]), now=now)


@router.post("/signout")
async def signout(request: Request, runtime: RuntimeDep, state: State, form: Form) -> Response:
    who = await load_signed_in(runtime.cache, runtime.wrapper, state.sid) if state.sid else None
    if state.sid:
        await forget_signed_in(runtime.cache, state.sid)
    state.rotate(None)
    state.flash("info", "You have signed out.")
    oidc = oidc_client(request)
    if oidc is not None and who is not None:
        try:
            after = runtime.settings.public_url.rstrip("/") + f"{PREFIX}/signin"
            url = await oidc.logout_url(id_token=who.id_token, after=after)
        except ServiceUnavailable:
            url = None
        if url:
            return RedirectResponse(url, status_code=303)
    return RedirectResponse(f"{PREFIX}/signin", status_code=303)


# --- picking the merchant ---------------------------------------------------------------------


@router.get("/merchants")
async def merchants_page(request: Request, runtime: RuntimeDep, who: Who) -> Response:
    return rendering.render(
        request,
        "merchants.html",
        {
            "memberships": await memberships(runtime, who.principal.subject),
            "next": safe_next(request.query_params.get("next")),
        },
    )


@router.post("/merchants")
async def pick_merchant(
    request: Request, runtime: RuntimeDep, who: Who, state: State, form: Form
) -> Response:
    assert state.sid is not None  # signed in
    try:
        await act_for(
            runtime, sid=state.sid, who=who, merchant_id=field(form, "merchant_id"), now=utcnow()
        )
    except Forbidden:
        state.flash("error", "You are not a member of that merchant.")
        raise Redirect(f"{PREFIX}/merchants") from None
    return RedirectResponse(safe_next(field(form, "next")), status_code=303)
