"""The one client of the OpenID provider (Keycloak or any other): discovery, keys, token endpoint.

Both the Bearer-token verifier (:class:`viopay.auth.issuer.OidcVerifier`) and the portal's
sign-in (:mod:`viopay.portal.oidc`) go through one :class:`OidcProvider`, so they share one
discovery document, one JWKS and one HTTP connection pool.

Key rotation: the provider publishes a new key (a new ``kid``) and starts signing with it; the
first token naming a ``kid`` we do not hold makes us fetch the JWKS again, at most once every
``jwks_refresh_seconds`` (a flood of made-up ``kid`` values cannot turn into a flood of fetches).
The JWKS is also fetched again once it is older than five minutes, so a key the provider no longer
publishes is forgotten (if the provider cannot be reached then, the keys held are kept).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from viopay.errors import ServiceUnavailable, Unauthorized

DISCOVERY_TTL = 300.0
KEYS_MAX_AGE = 300.0
log = structlog.get_logger("viopay.oidc")


@dataclass(frozen=True)
class Discovery:
    """The parts of ``/.well-known/openid-configuration`` the server uses."""

    issuer: str
    jwks_uri: str
    token_endpoint: str
    authorization_endpoint: str | None
    end_session_endpoint: str | None


def _parse_discovery(doc: dict[str, Any], *, issuer: str) -> Discovery:
    if not isinstance(doc.get("issuer"), str) or doc["issuer"].rstrip("/") != issuer:
        # OpenID Connect Discovery §4.3: the document must name the issuer it was fetched for.
        raise ServiceUnavailable("the identity provider's discovery document names another issuer")
    try:
        return Discovery(
            issuer=issuer,
            jwks_uri=str(doc["jwks_uri"]),
            token_endpoint=str(doc["token_endpoint"]),
            authorization_endpoint=doc.get("authorization_endpoint"),
            end_session_endpoint=doc.get("end_session_endpoint"),
        )
    except KeyError as exc:
        raise ServiceUnavailable(
            "the identity provider's discovery document is incomplete"
        ) from exc


def signing_algorithms(key: Any) -> list[str]:
    """Only the algorithm of the key's own type: a token whose header names another (RS256 with
    an EC key, or "none") is refused before any verification is attempted."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ["ES256"]
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256"]
    return []


def _parse_jwks(jwks: dict[str, Any]) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for jwk in jwks.get("keys", []) if isinstance(jwks, dict) else []:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        try:
            keys[str(jwk["kid"])] = jwt.PyJWK.from_dict(jwk).key
        except (jwt.PyJWTError, KeyError, ValueError, TypeError):
            continue  # an unusable key (an encryption key, an unknown type) is skipped
    return keys


class OidcProvider:
    """One OpenID provider, found from its issuer URL (``VIOPAY_OIDC_ISSUER``)."""

    def __init__(
        self,
        *,
        issuer: str,
        jwks_refresh_seconds: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.jwks_refresh_seconds = jwks_refresh_seconds
        self._http = client or httpx.AsyncClient(timeout=5.0)
        self._discovery: Discovery | None = None
        self._discovery_at = 0.0
        self._keys: dict[str, Any] = {}
        self._keys_at: float | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OidcProvider(issuer={self.issuer!r})"

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url)
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ServiceUnavailable("the identity provider is unreachable") from exc
        if not isinstance(body, dict):
            raise ServiceUnavailable("the identity provider answered something else than JSON")
        return body

    async def discovery(self) -> Discovery:
        if self._discovery is None or time.monotonic() - self._discovery_at > DISCOVERY_TTL:
            doc = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
            self._discovery = _parse_discovery(doc, issuer=self.issuer)
            self._discovery_at = time.monotonic()
        return self._discovery

    async def _refresh_keys(self, *, older_than: float) -> None:
        async with self._lock:
            if self._keys_at is not None and time.monotonic() - self._keys_at < older_than:
                return  # fetched a moment ago (maybe by a concurrent request): nothing new
            discovery = await self.discovery()
            self._keys = _parse_jwks(await self._get_json(discovery.jwks_uri))
            self._keys_at = time.monotonic()

    async def key(self, kid: object) -> Any:
        """The public key of ``kid``, fetching the JWKS again when it is not one we know (or the
        copy we hold is older than :data:`KEYS_MAX_AGE`: a withdrawn key is then forgotten)."""
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("the token names no key")
        if kid not in self._keys:
            await self._refresh_keys(older_than=self.jwks_refresh_seconds)
        elif self._keys_at is None or time.monotonic() - self._keys_at > KEYS_MAX_AGE:
            try:
                await self._refresh_keys(older_than=KEYS_MAX_AGE)
            except ServiceUnavailable:
                log.warning("oidc_jwks_refresh_failed", issuer=self.issuer)  # keep the known keys
        key = self._keys.get(kid)
        if key is None:
            raise Unauthorized("the token was signed by an unknown key")
        return key

    async def token(self, form: dict[str, str]) -> httpx.Response:
        """POST a grant to the token endpoint; the caller reads the answer."""
        endpoint = (await self.discovery()).token_endpoint
        try:
            return await self._http.post(endpoint, data=form)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable("the identity provider is unreachable") from exc

    async def close(self) -> None:
        await self._http.aclose()
