"""The portal's browser session: a small signed cookie, and who signed in, kept in the cache.

The cookie holds no credential of the merchant API: a random portal session id, the CSRF token,
the pending OpenID Connect state and flash messages, signed with HMAC-SHA256 under a key derived
from the master key (so every server process agrees). Who signed in (the principal the API would
see for their token) lives in the cache under that id, so signing out ends it everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from viopay.auth.issuer import Principal
from viopay.cache import Cache
from viopay.crypto.wrapping import KeyWrapper

COOKIE_MAX_AGE = 12 * 3600
MAX_SIGNED_IN = 12 * 3600
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_SECURE_NAME = (
    "__Host-viopay_portal"  # __Host-: Secure, Path=/, no Domain, so no subdomain can set it
)
_PLAIN_NAME = "viopay_portal"
_WRAP_CONTEXT = "portal-refresh-token"


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class BrowserState:
    """What the signed cookie carries. ``dirty`` marks it for writing back."""

    csrf: str
    sid: str | None = None
    oidc: dict[str, str] | None = None
    flashes: list[tuple[str, str]] = field(default_factory=list)
    dirty: bool = False

    def flash(self, level: str, message: str) -> None:
        self.flashes.append((level, message))
        self.dirty = True

    def take_flashes(self) -> list[tuple[str, str]]:
        taken, self.flashes = self.flashes, []
        if taken:
            self.dirty = True
        return taken

    def rotate(self, sid: str | None) -> None:
        """A new CSRF token and session id: at sign-in and sign-out (no session fixation)."""
        self.csrf, self.sid, self.oidc, self.dirty = new_token(), sid, None, True


class CookieCodec:
    """``base64url(json) . base64url(HMAC-SHA256)``; anything else reads as no cookie."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, b"viopay-portal-v1." + payload, hashlib.sha256).digest()

    def dumps(self, state: BrowserState, *, now: float) -> str:
        document = {
            "c": state.csrf,
            "s": state.sid,
            "o": state.oidc,
            "f": state.flashes[-5:],
            "t": int(now),
        }
        payload = _b64(orjson.dumps(document))
        return f"{payload.decode()}.{_b64(self._mac(payload)).decode()}"

    def loads(self, value: str, *, now: float) -> BrowserState | None:
        payload, _, mac = value.encode("ascii", "replace").partition(b".")
        try:
            valid = hmac.compare_digest(_unb64(mac), self._mac(payload))
            document: Any = orjson.loads(_unb64(payload)) if valid else None
        except (ValueError, orjson.JSONDecodeError):
            return None
        if (
            not isinstance(document, dict)
            or not 0 <= now - float(document.get("t", 0)) <= COOKIE_MAX_AGE
        ):
            return None
        flashes = [(str(level), str(text)) for level, text in document.get("f") or []]
        return BrowserState(
            csrf=str(document["c"]), sid=document.get("s"), oidc=document.get("o"), flashes=flashes
        )


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _unb64(text: bytes) -> bytes:
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


def is_local_http(request: Request) -> bool:
    """Plain HTTP on this machine: the only case where the cookie may go without ``Secure``
    (and never when this server's public URL is https, as behind a TLS-terminating proxy)."""
    runtime = getattr(request.app.state, "runtime", None)
    public_https = runtime is not None and runtime.settings.public_url.startswith("https://")
    local = request.url.scheme == "http" and (request.url.hostname or "") in _LOCAL_HOSTS
    return local and not public_https


def cookie_name(request: Request) -> str:
    return _PLAIN_NAME if is_local_http(request) else _SECURE_NAME


def codec_for(wrapper: KeyWrapper) -> CookieCodec:
    return CookieCodec(wrapper.derive("portal-cookie"))


def read_state(request: Request, codec: CookieCodec) -> BrowserState:
    raw = request.cookies.get(cookie_name(request))
    state = codec.loads(raw, now=time.time()) if raw else None
    return state or BrowserState(csrf=new_token(), dirty=True)


def write_state(
    request: Request, response: Response, codec: CookieCodec, state: BrowserState
) -> None:
    response.set_cookie(
        cookie_name(request),
        codec.dumps(state, now=time.time()),
        max_age=COOKIE_MAX_AGE,
        path="/",
        secure=not is_local_http(request),
        httponly=True,
        samesite="lax",
    )


# --- who signed in ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedIn:
    """A principal of the merchant API, as the portal keeps it between requests."""

    principal: Principal
    name: str  # what the header shows: an email, a username or a client id
    started_at: datetime
    until: datetime  # when this portal session ends
    refresh_token: str | None = None
    id_token: str | None = None
    merchant_id: str | None = None  # the merchant picked last, to resume its session

    def __repr__(self) -> str:
        return f"SignedIn(subject={self.principal.subject!r})"


def session_end(
    principal: Principal,
    *,
    started_at: datetime,
    now: datetime,
    refresh_expires_in: int | None = None,
    refreshable: bool = False,
) -> datetime:
    """Until the token (or, with a refresh token, that token) expires; 12 h after sign-in at most.

    A provider that issues a refresh token without saying how long it lasts (Keycloak says it in
    ``refresh_expires_in``, OAuth does not) answers at the next refresh whether it still holds.
    """
    if refresh_expires_in:
        lasts = now + timedelta(seconds=refresh_expires_in)
    elif refreshable:
        lasts = started_at + timedelta(seconds=MAX_SIGNED_IN)
    else:
        lasts = principal.expires_at
    return min(lasts, started_at + timedelta(seconds=MAX_SIGNED_IN))


def _key(sid: str) -> str:
    return f"portal:{sid}"


async def store_signed_in(
    cache: Cache, wrapper: KeyWrapper, *, sid: str, signed_in: SignedIn, now: datetime
) -> None:
    principal = signed_in.principal
    document: dict[str, Any] = {
        "subject": principal.subject,
        "kind": principal.kind,
        "roles": sorted(principal.roles),
        "session_key": principal.session_key,
        "expires_at": principal.expires_at.timestamp(),
        "name": signed_in.name,
        "started_at": signed_in.started_at.timestamp(),
        "until": signed_in.until.timestamp(),
        "merchant_id": signed_in.merchant_id,
    }
    # Tokens of the identity provider rest in the cache only wrapped under the master key.
    for name, token in (
        ("refresh_token", signed_in.refresh_token),
        ("id_token", signed_in.id_token),
    ):
        if token:
            sealed = wrapper.wrap(token.encode(), context=_WRAP_CONTEXT)
            document[name] = base64.b64encode(sealed).decode()
    ttl = (signed_in.until - now).total_seconds()
    if ttl > 0:
        await cache.set(_key(sid), orjson.dumps(document), ttl=ttl)


async def load_signed_in(cache: Cache, wrapper: KeyWrapper, sid: str) -> SignedIn | None:
    raw = await cache.get(_key(sid))
    if raw is None:
        return None
    document = orjson.loads(raw)
    principal = Principal(
        subject=document["subject"],
        kind=document["kind"],
        roles=frozenset(document["roles"]),
        session_key=document["session_key"],
        expires_at=datetime.fromtimestamp(document["expires_at"], UTC),
    )
    tokens = {
        name: wrapper.unwrap(base64.b64decode(document[name]), context=_WRAP_CONTEXT).decode()
        for name in ("refresh_token", "id_token")
        if document.get(name)
    }
    return SignedIn(
        principal,
        document["name"],
        started_at=datetime.fromtimestamp(document["started_at"], UTC),
        until=datetime.fromtimestamp(document["until"], UTC),
        refresh_token=tokens.get("refresh_token"),
        id_token=tokens.get("id_token"),
        merchant_id=document.get("merchant_id"),
    )


async def forget_signed_in(cache: Cache, sid: str) -> None:
    await cache.delete(_key(sid))
