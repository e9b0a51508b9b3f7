"""Merchants and their members."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor, record_event
from viopay.errors import InvalidState, NotFound
from viopay.ids import new_id
from viopay.merchants.config import new_config
from viopay.merchants.models import Merchant, MerchantMember, Role


async def create_merchant(
    session: AsyncSession,
    *,
    name: str,
    currency: str,
    country: str,
    timezone: str,
    actor: Actor,
    now: datetime,
) -> Merchant:
    merchant = Merchant(
        merchant_id=new_id("mer_"),
        name=name,
        currency=currency,
        country=country,
        timezone=timezone,
        created_at=now,
    )
    session.add(merchant)
    session.add(new_config(merchant, now=now))
    record_event(
        session,
        type="merchant.created",
        actor=actor,
        subject_type="merchant",
        subject_id=merchant.merchant_id,
        merchant_id=merchant.merchant_id,
        now=now,
        data={"name": name, "currency": currency, "country": country, "timezone": timezone},
    )
    await session.flush()
    return merchant


async def get_merchant(session: AsyncSession, merchant_id: str) -> Merchant:
    merchant = await session.get(Merchant, merchant_id)
    if merchant is None:
        raise NotFound("no such merchant")
    return merchant


async def add_member(
    session: AsyncSession,
    *,
    merchant_id: str,
    subject: str,
    role: Role,
    actor: Actor,
    now: datetime,
) -> MerchantMember:
    await get_merchant(session, merchant_id)
    existing = await membership(session, merchant_id=merchant_id, subject=subject)
    if existing is not None:
        raise InvalidState("that subject is already a member of this merchant")
    member = MerchantMember(merchant_id=merchant_id, subject=subject, role=role, created_at=now)
    session.add(member)
    record_event(
        session,
        type="member.added",
        actor=actor,
        subject_type="member",
        subject_id=subject,
        merchant_id=merchant_id,
        now=now,
        data={"role": role.value},
    )
    await session.flush()
    return member


async def membership(
    session: AsyncSession, *, merchant_id: str, subject: str
) -> MerchantMember | None:
    member: MerchantMember | None = await session.scalar(
        select(MerchantMember).where(
            MerchantMember.merchant_id == merchant_id, MerchantMember.subject == subject
        )
    )
    return member


async def list_merchants(db: AsyncSession) -> list[Merchant]:
    """Every merchant, oldest first (``viopay merchant list``)."""
    return list(
        (
            await db.scalars(select(Merchant).order_by(Merchant.created_at, Merchant.merchant_id))
        ).all()
    )


async def members_of(db: AsyncSession, merchant_id: str) -> list[MerchantMember]:
    """A merchant's members (users and API clients), oldest first."""
    rows = await db.scalars(
        select(MerchantMember)
        .where(MerchantMember.merchant_id == merchant_id)
        .order_by(MerchantMember.created_at, MerchantMember.id)
    )
    return list(rows)
