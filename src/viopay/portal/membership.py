"""Which merchant the portal acts for: the API's merchant session (``/session/initiate``).

The portal remembers the merchant picked last, so when the merchant session ends before the
portal session does (it lasts as long as the token it was made with, and Keycloak's tokens are
short), the next page initiates it again: membership is checked anew each time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import select

from viopay.auth.sessions import MerchantSession, initiate_session
from viopay.db import transaction
from viopay.merchants.models import Merchant, MerchantMember
from viopay.portal.session import SignedIn, store_signed_in
from viopay.runtime import Runtime


@dataclass(frozen=True)
class Membership:
    merchant_id: str
    name: str
    role: str


async def memberships(runtime: Runtime, subject: str) -> list[Membership]:
    async with transaction(runtime.sessions) as db:
        rows = await db.execute(
            select(Merchant.merchant_id, Merchant.name, MerchantMember.role)
            .join(MerchantMember, MerchantMember.merchant_id == Merchant.merchant_id)
            .where(MerchantMember.subject == subject)
            .order_by(Merchant.name, Merchant.merchant_id)
        )
        return [Membership(m_id, name, role.value) for m_id, name, role in rows.all()]


async def act_for(
    runtime: Runtime, *, sid: str, who: SignedIn, merchant_id: str, now: datetime
) -> tuple[MerchantSession, SignedIn]:
    """``POST /session/initiate``'s service for the portal's principal; raises ``Forbidden`` for
    a merchant it is not a member of (or that does not exist)."""
    async with transaction(runtime.sessions) as db:
        session = await initiate_session(
            db, runtime.cache, principal=who.principal, merchant_id=merchant_id, now=now
        )
    if who.merchant_id != merchant_id:
        who = replace(who, merchant_id=merchant_id)
        await store_signed_in(runtime.cache, runtime.wrapper, sid=sid, signed_in=who, now=now)
    return session, who
