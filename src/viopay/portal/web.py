"""What every portal route shares: the route class (HTML errors, security headers, the cookie),
the signed-in and merchant dependencies, and the CSRF check of every POST."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import structlog
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy import func, select
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse, Response

from viopay.audit import Actor
from viopay.auth.deps import managing_session
from viopay.auth.sessions import MerchantSession, current_session
from viopay.auth.users import is_disabled
from viopay.db import transaction
from viopay.deps import RuntimeDep
from viopay.errors import (
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    SessionRequired,
    Unauthorized,
    ViopayError,
)
from viopay.ids import utcnow
from viopay.merchants.models import MerchantMember
from viopay.merchants.service import get_merchant
from viopay.portal import rendering
from viopay.portal.membership import act_for, memberships
from viopay.portal.oidc import OidcClient
from viopay.portal.session import (
    BrowserState,
    SignedIn,
    codec_for,
    forget_signed_in,
    load_signed_in,
    read_state,
    session_end,
    store_signed_in,
    write_state,
)
from viopay.runtime import Runtime

log = structlog.get_logger("viopay.portal")
PREFIX = "/portal"
HOME = f"{PREFIX}/devices"
REFRESH_MARGIN = timedelta(seconds=30)


# --- flow control -----------------------------------------------------------------------------


class Redirect(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class SignInRequired(Exception):
    """To the sign-in page; ``come_back``: and then back to the page asked for."""

    def __init__(self, message: str | None = None, *, come_back: bool = True) -> None:
        super().__init__(message or "")
        self.message = message
        self.come_back = come_back


class CsrfRefused(ViopayError):
    code, status, title = "forbidden", 403, "Form refused"
    default_detail = "This form was not sent from this portal, or it has expired. Go back, reload the page and try again."


# --- security headers and the route class -----------------------------------------------------


def security_headers(request: Request, response: Response) -> None:
    form_action = "'self'"
    oidc = oidc_client(request)
    if oidc is not None:  # signing out of Keycloak redirects a form POST there
        parts = urlsplit(oidc.issuer)
        form_action += f" {parts.scheme}://{parts.netloc}"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'; font-src 'self'; form-action {form_action}; frame-ancestors 'none'; "
        "base-uri 'none'; object-src 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=()"
    if not request.url.path.startswith(f"{PREFIX}/static/"):
        response.headers["Cache-Control"] = "no-store"


def _is_fetch(request: Request) -> bool:
    return request.headers.get("x-requested-with") == "fetch"


class PortalRoute(APIRoute):
    """Portal errors are HTML pages (the API's problem+json stays for every other path), and
    every portal response gets the security headers and, when it changed, the signed cookie."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def portal_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except Redirect as exc:  # a fetch of a fragment must not get a whole page instead
                response = (
                    Response(status_code=401)
                    if _is_fetch(request)
                    else RedirectResponse(exc.url, status_code=303)
                )
            except SignInRequired as exc:
                response = _to_sign_in(request, exc)
            except ViopayError as exc:
                response = error_page(request, exc)
            except RequestValidationError:
                response = error_page(request, InvalidRequest("the address has invalid parameters"))
            except (OperationalError, InterfaceError, OSError, TimeoutError) as exc:
                log.warning("backing service unavailable", error=type(exc).__name__)
                response = error_page(request, ServiceUnavailable())
            except StarletteHTTPException as exc:
                error = (
                    NotFound("no such page")
                    if exc.status_code == 404
                    else InvalidRequest(str(exc.detail))
                )
                response = error_page(request, error)
            state: BrowserState | None = getattr(request.state, "portal_state", None)
            if state is not None and state.dirty:
                write_state(request, response, codec_for(runtime_of(request).wrapper), state)
            security_headers(request, response)
            return response

        return portal_handler


def _to_sign_in(request: Request, exc: SignInRequired) -> Response:
    if _is_fetch(request):
        return Response(status_code=401)
    state: BrowserState | None = getattr(request.state, "portal_state", None)
    if state is not None and exc.message:
        state.flash("info", exc.message)
    target = f"{PREFIX}/signin"
    if exc.come_back and request.method == "GET":
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target += f"?next={quote(here, safe='')}"
    return RedirectResponse(target, status_code=303)


def error_page(request: Request, error: ViopayError) -> Response:
    if _is_fetch(request):
        return Response(status_code=error.status)
    headers = {k: v for k, v in error.headers.items() if k == "Retry-After"}
    response = rendering.render(
        request, "error.html", {"error": error, "message": friendly(error)}, status=error.status
    )
    response.headers.update(headers)
    return response


def friendly(error: ViopayError) -> str:
    """What a merchant reads for an error: plain words, never a secret or an internal detail."""
    if isinstance(error, CsrfRefused):
        return error.detail
    if error.status == 403:
        return "Your role lets you view this merchant's pages but not change them. Ask an owner or an admin."
    if error.status == 404:
        return "The page or item you asked for does not exist, or it belongs to another merchant."
    if error.status == 429:
        return "Too many attempts. Wait a few minutes and try again."
    if error.status == 503:
        return "A service the portal depends on is unreachable. Try again in a moment."
    if error.status == 400:
        return "The request was not valid. Go back and check what you entered."
    return "Something went wrong on our side. Try again; if it keeps happening, contact support."


# --- the runtime, the cookie and who signed in ------------------------------------------------


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def oidc_client(request: Request) -> OidcClient | None:
    """The portal's OpenID Connect client when a provider is configured (made once per app)."""
    runtime = runtime_of(request)
    settings = runtime.settings
    if runtime.oidc is None or not settings.oidc_client_id:
        return None
    client: OidcClient | None = getattr(request.app.state, "portal_oidc", None)
    if client is None:
        secret = (
            settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None
        )
        client = OidcClient(
            provider=runtime.oidc.provider,  # one discovery document and JWKS with the API's
            client_id=settings.oidc_client_id,
            client_secret=secret,
            redirect_uri=settings.public_url.rstrip("/") + f"{PREFIX}/auth/callback",
        )
        request.app.state.portal_oidc = client
    return client


async def browser_state(request: Request, runtime: RuntimeDep) -> BrowserState:
    state: BrowserState | None = getattr(request.state, "portal_state", None)
    if state is None:
        state = read_state(request, codec_for(runtime.wrapper))
        request.state.portal_state = state
    return state


State = Annotated[BrowserState, Depends(browser_state)]


async def signed_in(request: Request, runtime: RuntimeDep, state: State) -> SignedIn:
    if state.sid is None:
        raise SignInRequired()
    who = await load_signed_in(runtime.cache, runtime.wrapper, state.sid)
    if who is None:
        state.rotate(None)
        raise SignInRequired("Your session has ended. Sign in again.")
    now = utcnow()
    if who.principal.expires_at - REFRESH_MARGIN <= now:
        who = await _refreshed(request, runtime, state.sid, who, now)
    request.state.portal_who = who
    return who


async def _refreshed(
    request: Request, runtime: Runtime, sid: str, who: SignedIn, now: datetime
) -> SignedIn:
    """Keycloak's access tokens are short: swap the refresh token for a new one (same ``sid``)."""
    oidc = oidc_client(request)
    if oidc is not None and runtime.oidc is not None and who.refresh_token:
        try:
            tokens = await oidc.refresh(who.refresh_token)
            principal = await runtime.oidc.verify(tokens.access_token)
        except Unauthorized:
            pass
        else:
            refresh_token = tokens.refresh_token or who.refresh_token
            fresh = replace(
                who,
                principal=principal,
                until=session_end(
                    principal,
                    started_at=who.started_at,
                    now=now,
                    refresh_expires_in=tokens.refresh_expires_in if refresh_token else None,
                    refreshable=bool(refresh_token),
                ),
                refresh_token=refresh_token,
                id_token=tokens.id_token or who.id_token,
            )
            await store_signed_in(runtime.cache, runtime.wrapper, sid=sid, signed_in=fresh, now=now)
            return fresh
    await forget_signed_in(runtime.cache, sid)
    (await browser_state(request, runtime)).rotate(None)
    raise SignInRequired("Your session has expired. Sign in again.")


Who = Annotated[SignedIn, Depends(signed_in)]


# --- the merchant the portal acts for ---------------------------------------------------------


@dataclass(frozen=True)
class MerchantView:
    merchant_id: str
    name: str
    currency: str
    timezone: str


@dataclass(frozen=True)
class Portal:
    """One signed-in request acting for one merchant, through the API's merchant session."""

    runtime: Runtime
    state: BrowserState
    who: SignedIn
    session: MerchantSession
    merchant: MerchantView
    merchant_count: int

    @property
    def can_change(self) -> bool:
        return self.session.can_change

    @property
    def actor(self) -> Actor:
        return Actor(self.who.principal.kind, self.who.principal.subject)


async def portal(request: Request, runtime: RuntimeDep, state: State, who: Who) -> Portal:
    try:
        session = await current_session(runtime.cache, who.principal)
    except SessionRequired:
        session, who = await _resume(runtime, state, who)
    async with transaction(runtime.sessions) as db:
        if who.principal.kind == "user" and await is_disabled(db, who.principal.subject):
            await forget_signed_in(runtime.cache, state.sid or "")
            state.rotate(None)
            raise SignInRequired("This account is disabled. Ask your Viopay operator.")
        merchant = await get_merchant(db, session.merchant_id)
        count = await db.scalar(
            select(func.count())
            .select_from(MerchantMember)
            .where(MerchantMember.subject == who.principal.subject)
        )
        view = MerchantView(
            merchant.merchant_id, merchant.name, merchant.currency, merchant.timezone
        )
    context = Portal(runtime, state, who, session, view, int(count or 0))
    request.state.portal = context
    return context


async def _resume(
    runtime: Runtime, state: BrowserState, who: SignedIn
) -> tuple[MerchantSession, SignedIn]:
    """No merchant session (yet, or any more): initiate one for the merchant picked last, or
    the only one; else ask which."""
    assert state.sid is not None
    merchant_id = who.merchant_id
    if merchant_id is None:
        mine = await memberships(runtime, who.principal.subject)
        if len(mine) != 1:
            raise Redirect(f"{PREFIX}/merchants")
        merchant_id = mine[0].merchant_id
    try:
        return await act_for(runtime, sid=state.sid, who=who, merchant_id=merchant_id, now=utcnow())
    except Forbidden:  # no longer a member there
        raise Redirect(f"{PREFIX}/merchants") from None


PortalDep = Annotated[Portal, Depends(portal)]


# --- forms ------------------------------------------------------------------------------------


def _same_origin(request: Request) -> bool:
    """Browsers say where a POST comes from: this server (by its Host or its public URL) only."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    try:
        theirs = urlsplit(origin).netloc  # "null" (an opaque origin) has none
    except ValueError:  # not a URL at all (e.g. "http://[::1"): not from here
        return False
    ours = {
        request.headers.get("host", ""),
        urlsplit(runtime_of(request).settings.public_url).netloc,
    }
    return bool(theirs) and theirs in ours


async def checked_form(request: Request, state: State) -> FormData:
    """The POSTed form once its CSRF token matches this browser's (and it came from here)."""
    form = await request.form()
    token = form.get("csrf_token")
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), state.csrf.encode()):
        log.info("portal form refused", reason="csrf", path=request.url.path)
        raise CsrfRefused()
    if not _same_origin(request):
        log.info("portal form refused", reason="origin", path=request.url.path)
        raise CsrfRefused()
    if any(isinstance(value, str) and "\x00" in value for _, value in form.multi_items()):
        raise InvalidRequest("a form field holds a U+0000")  # PROTOCOL §1: never a query
    return form


Form = Annotated[FormData, Depends(checked_form)]


def field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def require_change(context: Portal) -> None:
    """Staff see; owners and admins change: the buttons are hidden, and the POST refused here
    by the very rule of the merchant API."""
    await managing_session(context.session)


def safe_next(value: str | None) -> str:
    """Only a path of this portal: never another site (no open redirect)."""
    if not value or not value.startswith(f"{PREFIX}/") or value.startswith("//") or "\\" in value:
        return HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return HOME
    return value
