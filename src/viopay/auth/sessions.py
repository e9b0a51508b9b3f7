"""Merchant sessions (PROTOCOL §2.5): which merchant a Bearer token acts for, kept in the cache."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.auth.issuer import Principal
from viopay.cache import Cache
from viopay.errors import Forbidden, SessionRequired
from viopay.ids import new_id
from viopay.merchants.models import Role
from viopay.merchants.service import membership

MAX_SESSION = timedelta(hours=12)


@dataclass(frozen=True)
class MerchantSession:
    session_id: str
    merchant_id: str
    role: Role
    expires_at: datetime
    principal: Principal

    @property
    def can_change(self) -> bool:
        return self.role in (Role.owner, Role.admin)


def _key(principal: Principal) -> str:
    return f"session:{principal.session_key}"


async def initiate_session(
    session: AsyncSession, cache: Cache, *, principal: Principal, merchant_id: str, now: datetime
) -> MerchantSession:
    member = await membership(session, merchant_id=merchant_id, subject=principal.subject)
    if member is None:
        raise Forbidden("not a member of that merchant")
    expires_at = min(principal.expires_at, now + MAX_SESSION)
    ttl = (expires_at - now).total_seconds()
    if ttl <= 0:
        raise Forbidden("the token expires too soon to start a session")
    merchant_session = MerchantSession(
        new_id("ses_"), merchant_id, member.role, expires_at, principal
    )
    value = {
        "session_id": merchant_session.session_id,
        "merchant_id": merchant_id,
        "role": member.role.value,
        "expires_at": expires_at.timestamp(),
        "started_at": now.timestamp(),
        "subject": principal.subject,
    }
    await cache.set(_key(principal), orjson.dumps(value), ttl=ttl)
    return merchant_session


async def current_session(cache: Cache, principal: Principal) -> MerchantSession:
    raw = await cache.get(_key(principal))
    if raw is None:
        raise SessionRequired()
    value = orjson.loads(raw)
    if value["subject"] != principal.subject:
        raise SessionRequired()
    await _follow_refresh(cache, principal, value)
    return MerchantSession(
        session_id=value["session_id"],
        merchant_id=value["merchant_id"],
        role=Role(value["role"]),
        expires_at=datetime.fromtimestamp(value["expires_at"], tz=principal.expires_at.tzinfo),
        principal=principal,
    )


async def _follow_refresh(cache: Cache, principal: Principal, value: dict[str, object]) -> None:
    """A refreshed token (same ``sid``, later ``exp``) carries the session on, up to 12 h from
    its start: PROTOCOL §2.5 keys sessions by ``sid`` "so it survives a token refresh"."""
    started = float(value.get("started_at", value["expires_at"]))  # type: ignore[arg-type]
    current = float(value["expires_at"])  # type: ignore[arg-type]
    wanted = min(principal.expires_at.timestamp(), started + MAX_SESSION.total_seconds())
    if wanted > current:
        value["expires_at"] = wanted
        await cache.set(
            _key(principal), orjson.dumps(value), ttl=wanted - datetime.now(UTC).timestamp()
        )
