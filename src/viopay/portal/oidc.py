"""OpenID Connect authorization-code flow with PKCE, for portal sign-in through Keycloak.

Discovery gives the endpoints; ``state``, ``nonce`` and the PKCE ``code_verifier`` travel in the
signed portal cookie; the access token is then checked by the same :class:`OidcVerifier` as every
Bearer token of the API, and the ID token's signature, audience and nonce here.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from viopay.errors import ServiceUnavailable, Unauthorized

DISCOVERY_TTL = 300.0
_ALGORITHMS = ["RS256", "ES256", "PS256"]


@dataclass(frozen=True)
class Provider:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None


@dataclass(frozen=True)
class TokenSet:
    access_token: str
    id_token: str | None
    refresh_token: str | None
    refresh_expires_in: int | None

    def __repr__(self) -> str:
        return "TokenSet(…)"


def pkce_pair() -> tuple[str, str]:
    """``(code_verifier, code_challenge)`` for ``code_challenge_method=S256`` (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    return verifier, challenge


class OidcClient:
    """The portal as a confidential (or public) client of the realm."""

    def __init__(
        self, *, issuer: str, client_id: str, client_secret: str | None, redirect_uri: str
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self._provider: Provider | None = None
        self._provider_at = 0.0
        self._keys: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"OidcClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    async def _get(self, url: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                response = await http.get(url)
                response.raise_for_status()
                body: dict[str, Any] = response.json()
                return body
        except (httpx.HTTPError, ValueError) as exc:
            raise ServiceUnavailable("the identity provider is unreachable") from exc

    async def provider(self) -> Provider:
        if self._provider is None or time.monotonic() - self._provider_at > DISCOVERY_TTL:
            doc = await self._get(f"{self.issuer}/.well-known/openid-configuration")
            try:
                self._provider = Provider(
                    authorization_endpoint=str(doc["authorization_endpoint"]),
                    token_endpoint=str(doc["token_endpoint"]),
                    jwks_uri=str(doc["jwks_uri"]),
                    end_session_endpoint=doc.get("end_session_endpoint"),
                )
            except KeyError as exc:
                raise ServiceUnavailable(
                    "the identity provider's discovery document is incomplete"
                ) from exc
            self._provider_at = time.monotonic()
        return self._provider

    async def authorization_url(self, *, state: str, nonce: str, code_challenge: str) -> str:
        provider = await self.provider()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": "openid email profile",
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in provider.authorization_endpoint else "?"
        return f"{provider.authorization_endpoint}{separator}{query}"

    async def _token(self, form: dict[str, str]) -> TokenSet:
        provider = await self.provider()
        form = form | {"client_id": self.client_id}
        if self._client_secret:
            form["client_secret"] = self._client_secret
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                response = await http.post(provider.token_endpoint, data=form)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable("the identity provider is unreachable") from exc
        if response.status_code != 200:
            raise Unauthorized("the identity provider refused the sign-in")
        try:
            body = response.json()
            return TokenSet(
                access_token=str(body["access_token"]),
                id_token=body.get("id_token"),
                refresh_token=body.get("refresh_token"),
                refresh_expires_in=body.get("refresh_expires_in"),
            )
        except (ValueError, KeyError, TypeError):
            raise Unauthorized("the identity provider answered without a token") from None

    async def exchange(self, *, code: str, code_verifier: str) -> TokenSet:
        return await self._token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.redirect_uri,
                "code_verifier": code_verifier,
            }
        )

    async def refresh(self, refresh_token: str) -> TokenSet:
        return await self._token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def _key(self, kid: str | None) -> Any:
        if kid not in self._keys:
            jwks = await self._get((await self.provider()).jwks_uri)
            keys: dict[str, Any] = {}
            for jwk in jwks.get("keys", []):
                try:
                    keys[jwk["kid"]] = jwt.PyJWK.from_dict(jwk).key
                except (jwt.PyJWTError, KeyError):
                    continue
            self._keys = keys
        if kid not in self._keys:
            raise Unauthorized("the ID token was signed by an unknown key")
        return self._keys[kid]

    async def id_claims(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """The ID token's claims once its signature, issuer, audience, expiry and nonce hold."""
        try:
            key = await self._key(jwt.get_unverified_header(id_token).get("kid"))
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key=key,
                algorithms=_ALGORITHMS,
                audience=self.client_id,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "sub", "aud"]},
                leeway=30,
            )
        except jwt.PyJWTError:
            raise Unauthorized("the ID token is invalid") from None
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise Unauthorized("the ID token is not for this sign-in")
        return claims

    async def logout_url(self, *, id_token: str | None, after: str) -> str | None:
        provider = await self.provider()
        if not provider.end_session_endpoint:
            return None
        query = {"client_id": self.client_id, "post_logout_redirect_uri": after}
        if id_token:
            query["id_token_hint"] = id_token
        separator = "&" if "?" in provider.end_session_endpoint else "?"
        return f"{provider.end_session_endpoint}{separator}{urlencode(query)}"


def display_name(claims: dict[str, Any]) -> str:
    for name in ("email", "preferred_username", "name", "sub"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return "signed in"
