"""API clients of the embedded issuer: made by operators, secrets kept as keyed digests."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor, record_event
from viopay.auth.models import ApiClient
from viopay.crypto.wrapping import KeyWrapper
from viopay.errors import NotFound, Unauthorized
from viopay.ids import new_id
from viopay.merchants.models import MerchantMember, Role
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


# --- operators: list, show, revoke (viopay client …) ------------------------------------------


@dataclass(frozen=True)
class ClientView:
    client_id: str
    admin: bool
    revoked: bool
    created_at: datetime
    memberships: list[tuple[str, str]]  # (merchant_id, role)


async def _view(session: AsyncSession, client: ApiClient) -> ClientView:
    rows = await session.execute(
        select(MerchantMember.merchant_id, MerchantMember.role)
        .where(MerchantMember.subject == client.client_id)
        .order_by(MerchantMember.merchant_id)
    )
    return ClientView(
        client.client_id,
        client.admin,
        client.disabled_at is not None,
        client.created_at,
        [(m, Role(r).value) for m, r in rows],
    )


async def list_clients(
    session: AsyncSession, *, merchant_id: str | None = None
) -> list[ClientView]:
    query = select(ApiClient).order_by(ApiClient.created_at, ApiClient.client_id)
    if merchant_id is not None:
        query = query.where(
            ApiClient.client_id.in_(
                select(MerchantMember.subject).where(MerchantMember.merchant_id == merchant_id)
            )
        )
    return [await _view(session, c) for c in (await session.scalars(query)).all()]


async def show_client(session: AsyncSession, client_id: str) -> ClientView:
    client = await session.get(ApiClient, client_id)
    if client is None:
        raise NotFound("no such API client")
    return await _view(session, client)


async def revoke_client(
    session: AsyncSession, *, client_id: str, actor: Actor, now: datetime
) -> ClientView:
    """The client's credentials stop working at once (``POST /client/session`` answers 401);
    revoking twice changes nothing."""
    client = await session.get(ApiClient, client_id)
    if client is None:
        raise NotFound("no such API client")
    if client.disabled_at is None:
        client.disabled_at = now
        record_event(
            session,
            type="client.revoked",
            actor=actor,
            subject_type="client",
            subject_id=client_id,
            merchant_id=None,
            now=now,
        )
        await session.flush()
    return await _view(session, client)
