"""Bearer token verification: an OpenID provider such as Keycloak (viopay.auth.oidc), or the
embedded issuer.

The embedded issuer's ES256 key is made at first start and kept in the database wrapped under
the master key, so every server process signs and verifies with the same key.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from viopay.auth.models import SigningKey
from viopay.auth.oidc import OidcProvider, signing_algorithms
from viopay.crypto.wrapping import KeyWrapper
from viopay.errors import ServiceUnavailable, Unauthorized
from viopay.ids import new_id, utcnow

ADMIN_ROLE = "viopay-admin"
EMBEDDED_AUDIENCE = "viopay"
_WRAP_CONTEXT = "signing-key"


@dataclass(frozen=True)
class Principal:
    """Who a Bearer token speaks for."""

    subject: str
    kind: str  # "user" or "client"
    roles: frozenset[str]
    session_key: str  # the `sid` claim, or the SHA-256 of the token
    expires_at: datetime

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


def principal_from_claims(claims: dict[str, Any], token: str) -> Principal:
    realm = claims.get("realm_access") or {}
    roles = realm.get("roles") if isinstance(realm, dict) else None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("token has no subject")
    sid = claims.get("sid")
    kind = "client" if claims.get("client_id") or claims.get("typ") == "client" else "user"
    return Principal(
        subject=subject,
        kind=kind,
        roles=frozenset(r for r in roles or [] if isinstance(r, str)),
        session_key=sid
        if isinstance(sid, str) and sid
        else hashlib.sha256(token.encode()).hexdigest(),
        expires_at=datetime.fromtimestamp(int(claims["exp"]), tz=utcnow().tzinfo),
    )


def _decode(token: str, key: Any, *, issuer: str, audience: str) -> dict[str, Any]:
    algorithms = signing_algorithms(key)
    try:
        header_alg = jwt.get_unverified_header(token).get("alg")
    except jwt.PyJWTError:
        raise Unauthorized("the Bearer token is malformed") from None
    if header_alg not in algorithms:
        raise Unauthorized("the Bearer token is signed with an algorithm this key does not use")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=algorithms,
            issuer=issuer,
            options={"require": ["exp", "iss", "sub"], "verify_aud": False},
            leeway=30,
        )
    except (jwt.PyJWTError, ValueError, TypeError):
        raise Unauthorized("the Bearer token is invalid or expired") from None
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else list(aud or [])
    if audience not in audiences and claims.get("azp") != audience:
        raise Unauthorized("the Bearer token is not for this audience")
    return claims


class EmbeddedIssuer:
    """The server as its own token issuer (the embedded default)."""

    def __init__(
        self, *, private_key: ec.EllipticCurvePrivateKey, kid: str, issuer: str, ttl: int
    ) -> None:
        self._private = private_key
        self._public = private_key.public_key()
        self.kid = kid
        self.issuer = issuer
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"EmbeddedIssuer(kid={self.kid!r})"

    def issue(self, *, subject: str, roles: list[str], kind: str, now: datetime) -> tuple[str, int]:
        claims = {
            "iss": self.issuer,
            "aud": EMBEDDED_AUDIENCE,
            "sub": subject,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + timedelta(seconds=self.ttl)).timestamp()),
            "sid": new_id("sid_", 24),
            "typ": kind,
            "realm_access": {"roles": roles},
        }
        token = jwt.encode(claims, self._private, algorithm="ES256", headers={"kid": self.kid})
        return token, self.ttl

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("the Bearer token is malformed") from None
        if header.get("kid") != self.kid:
            raise Unauthorized("the Bearer token was not issued here")
        claims = _decode(token, self._public, issuer=self.issuer, audience=EMBEDDED_AUDIENCE)
        return principal_from_claims(claims, token)

    def jwks(self) -> dict[str, Any]:
        jwk: dict[str, Any] = jwt.algorithms.ECAlgorithm.to_jwk(self._public, as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "ES256"})
        return {"keys": [jwk]}

    async def close(self) -> None:
        return None


async def load_embedded_issuer(
    sessions: async_sessionmaker[AsyncSession], wrapper: KeyWrapper, *, issuer: str, ttl: int
) -> EmbeddedIssuer:
    """Load the shared signing key, making it on first start (safe when processes race)."""
    for _ in range(3):
        async with sessions() as session, session.begin():
            row = await session.scalar(
                select(SigningKey)
                .where(SigningKey.retired_at.is_(None))
                .order_by(SigningKey.created_at.desc())
            )
            if row is not None:
                pem = wrapper.unwrap(row.private_wrapped, context=_WRAP_CONTEXT)
                key = serialization.load_pem_private_key(pem, password=None)
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                return EmbeddedIssuer(private_key=key, kid=row.kid, issuer=issuer, ttl=ttl)
        try:
            await _create_signing_key(sessions, wrapper)
        except IntegrityError:
            await asyncio.sleep(0.05)
    raise RuntimeError("could not load or create the embedded signing key")


async def _create_signing_key(
    sessions: async_sessionmaker[AsyncSession], wrapper: KeyWrapper
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    async with sessions() as session, session.begin():
        # A fixed kid for the first key: two processes starting together collide on it.
        session.add(
            SigningKey(
                kid="emb-1",
                private_wrapped=wrapper.wrap(pem, context=_WRAP_CONTEXT),
                created_at=utcnow(),
                retired_at=None,
            )
        )


class OidcVerifier:
    """Bearer tokens of the OpenID provider (Keycloak or any other), with its rotating keys."""

    def __init__(self, *, provider: OidcProvider, audience: str) -> None:
        self.provider = provider
        self.issuer = provider.issuer
        self.audience = audience

    def __repr__(self) -> str:
        return f"OidcVerifier(issuer={self.issuer!r}, audience={self.audience!r})"

    async def verify(self, token: str) -> Principal:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise Unauthorized("the Bearer token is malformed") from None
        key = await self.provider.key(kid)
        claims = _decode(token, key, issuer=self.issuer, audience=self.audience)
        return principal_from_claims(claims, token)

    async def client_credentials(self, client_id: str, client_secret: str) -> dict[str, Any]:
        response = await self.provider.token(
            {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
            }
        )
        if response.status_code != 200:
            raise Unauthorized("bad client credentials")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise ServiceUnavailable("the identity provider answered without a token")
        return body

    async def close(self) -> None:
        await self.provider.close()
