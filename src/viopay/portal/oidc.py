"""OpenID Connect authorization-code flow with PKCE, for portal sign-in through Keycloak (or any
OpenID provider).

The provider's discovery document and keys come from the server's one
:class:`~viopay.auth.oidc.OidcProvider`; ``state``, ``nonce`` and the PKCE ``code_verifier`` travel in the
signed portal cookie; the access token is then checked by the same :class:`OidcVerifier` as every
Bearer token of the API, and the ID token's signature, audience and nonce here.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import jwt

from viopay.auth.oidc import OidcProvider, signing_algorithms
from viopay.errors import ServiceUnavailable, Unauthorized


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
    """The portal as a confidential (or public) client of the provider."""

    def __init__(
        self,
        *,
        provider: OidcProvider,
        client_id: str,
        client_secret: str | None,
        redirect_uri: str,
    ) -> None:
        self.provider = provider
        self.issuer = provider.issuer
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri

    def __repr__(self) -> str:
        return f"OidcClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    async def authorization_url(self, *, state: str, nonce: str, code_challenge: str) -> str:
        endpoint = (await self.provider.discovery()).authorization_endpoint
        if not endpoint:
            raise ServiceUnavailable("the identity provider has no authorization endpoint")
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
        separator = "&" if "?" in endpoint else "?"
        return f"{endpoint}{separator}{query}"

    async def _token(self, form: dict[str, str]) -> TokenSet:
        form = form | {"client_id": self.client_id}
        if self._client_secret:
            form["client_secret"] = self._client_secret
        response = await self.provider.token(form)
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

    async def id_claims(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """The ID token's claims once its signature, issuer, audience, expiry and nonce hold."""
        try:
            key = await self.provider.key(jwt.get_unverified_header(id_token).get("kid"))
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key=key,
                algorithms=signing_algorithms(key),
                audience=self.client_id,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "sub", "aud"]},
                leeway=30,
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthorized("the ID token is invalid") from None
        if not secrets.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise Unauthorized("the ID token is not for this sign-in")
        return claims

    async def logout_url(self, *, id_token: str | None, after: str) -> str | None:
        endpoint = (await self.provider.discovery()).end_session_endpoint
        if not endpoint:
            return None
        query = {"client_id": self.client_id, "post_logout_redirect_uri": after}
        if id_token:
            query["id_token_hint"] = id_token
        separator = "&" if "?" in endpoint else "?"
        return f"{endpoint}{separator}{urlencode(query)}"


def display_name(claims: dict[str, Any]) -> str:
    for name in ("email", "preferred_username", "name", "sub"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return "signed in"
