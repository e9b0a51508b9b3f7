"""API clients of the embedded issuer: made by operators, secrets kept as keyed digests."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor
from viopay.auth.models import ApiClient
from viopay.crypto.wrapping import KeyWrapper
from viopay.errors import Unauthorized
from viopay.ids import new_id
from viopay.merchants.models import Role
from viopay.merchants.service import add_member


@dataclass(frozen=True)
class NewClient:
    client_id: str
    client_secret: str
    merchant_id: str | None
    role: Role | None
    admin: bool

    def __repr__(self) -> str:
        return f"NewClient(client_id={self.client_id!r}, merchant_id={self.merchant_id!r})"


def secret_digest(wrapper: KeyWrapper, secret: str) -> str:
    return hmac.new(
        wrapper.derive("api-client-secret"), secret.encode(), hashlib.sha256
    ).hexdigest()


async def create_client(
    session: AsyncSession,
    *,
    wrapper: KeyWrapper,
    merchant_id: str | None,
    role: Role | None,
    admin: bool,
    actor: Actor,
    now: datetime,
) -> NewClient:
    client_id = new_id("cli_")
    secret = "vsk_" + secrets.token_urlsafe(32)
    session.add(
        ApiClient(
            client_id=client_id,
            secret_digest=secret_digest(wrapper, secret),
            admin=admin,
            created_at=now,
            disabled_at=None,
        )
    )
    await session.flush()
    if merchant_id is not None and role is not None:
        await add_member(
            session, merchant_id=merchant_id, subject=client_id, role=role, actor=actor, now=now
        )
    return NewClient(client_id, secret, merchant_id, role, admin)


async def authenticate_client(
    session: AsyncSession, *, wrapper: KeyWrapper, client_id: str, client_secret: str
) -> ApiClient:
    client = await session.get(ApiClient, client_id)
    # Compare against a digest even for an unknown client, so timing says nothing.
    expected = client.secret_digest if client is not None else "0" * 64
    ok = hmac.compare_digest(expected, secret_digest(wrapper, client_secret))
    if client is None or not ok or client.disabled_at is not None:
        raise Unauthorized("bad client credentials")
    return client
