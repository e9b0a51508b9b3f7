"""Portal users of the embedded default: made with ``viopay user create``, password-hashed.

A user is a merchant member whose ``subject`` is its ``user_id``; the portal signs it in with
its email and password and gets it a token from the embedded issuer, so it then acts exactly
like any other Bearer principal. With Keycloak configured, people sign in there instead.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Index, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from viopay.audit import Actor, record_event
from viopay.db import Base
from viopay.errors import InvalidRequest, InvalidState, NotFound, Unauthorized
from viopay.ids import new_id
from viopay.merchants.models import MerchantMember, Role
from viopay.merchants.service import add_member, get_merchant

MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 takes anything; a cap keeps a sign-in request cheap to refuse
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_hasher = PasswordHasher()
# Verified against when the email is unknown, so both answers take the same time.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class User(Base):
    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)

    def __repr__(self) -> str:
        return f"User(user_id={self.user_id!r})"


# Unique whatever the case: Alice@Example.com and alice@example.com are one person.
Index("uq_users_email_lower", func.lower(User.email), unique=True)


@dataclass(frozen=True)
class NewUser:
    user_id: str
    email: str
    merchant_id: str
    role: Role


def check_email(email: str) -> str:
    email = email.strip()
    if len(email) > 320 or not _EMAIL.match(email):
        raise InvalidRequest(
            "email is not an email address",
            errors=[{"field": "email", "message": "not an email address"}],
        )
    return email


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidRequest(
            f"the password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters",
            errors=[
                {
                    "field": "password",
                    "message": f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters",
                }
            ],
        )
    return password


async def hash_password(password: str) -> str:
    # argon2 is deliberately slow (tens of ms, 64 MiB): keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def find_user(db: AsyncSession, email: str) -> User | None:
    user: User | None = await db.scalar(
        select(User).where(func.lower(User.email) == email.strip().lower())
    )
    return user


async def create_user(
    db: AsyncSession,
    *,
    email: str,
    password: str,
    merchant_id: str,
    role: Role,
    actor: Actor,
    now: datetime,
) -> NewUser:
    """A new user, member of ``merchant_id`` with ``role`` (an existing email is refused)."""
    email = check_email(email)
    check_password(password)
    await get_merchant(db, merchant_id)
    if await find_user(db, email) is not None:
        raise InvalidState("a user with that email already exists")
    user = User(
        user_id=new_id("usr_"),
        email=email,
        password_hash=await hash_password(password),
        created_at=now,
    )
    db.add(user)
    await db.flush()
    await add_member(
        db, merchant_id=merchant_id, subject=user.user_id, role=role, actor=actor, now=now
    )
    return NewUser(user.user_id, user.email, merchant_id, role)


async def authenticate_user(db: AsyncSession, *, email: str, password: str) -> User:
    """The user with that email and password; one error for every failure, in the same time."""
    user = await find_user(db, email) if len(email) <= 320 else None
    candidate = password[:MAX_PASSWORD]
    try:
        await asyncio.to_thread(
            _hasher.verify, user.password_hash if user else _DUMMY_HASH, candidate
        )
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        raise Unauthorized("bad email or password") from None
    if user is None or len(password) > MAX_PASSWORD or user.disabled_at is not None:
        raise Unauthorized("bad email or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = await hash_password(password)
        await db.flush()
    return user


# --- operators: list, show, reset a password, disable (viopay user …) -------------------------


@dataclass(frozen=True)
class UserView:
    user_id: str
    email: str
    disabled: bool
    created_at: datetime
    memberships: list[tuple[str, str]]  # (merchant_id, role)


async def _memberships(db: AsyncSession, subjects: list[str]) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {s: [] for s in subjects}
    rows = await db.execute(
        select(MerchantMember.subject, MerchantMember.merchant_id, MerchantMember.role)
        .where(MerchantMember.subject.in_(subjects))
        .order_by(MerchantMember.merchant_id)
    )
    for subject, merchant_id, role in rows:
        found[subject].append((merchant_id, Role(role).value))
    return found


async def list_users(db: AsyncSession, *, merchant_id: str | None = None) -> list[UserView]:
    """Every user (of one merchant when given), by email."""
    query = select(User).order_by(func.lower(User.email))
    if merchant_id is not None:
        query = query.where(
            User.user_id.in_(
                select(MerchantMember.subject).where(MerchantMember.merchant_id == merchant_id)
            )
        )
    users = list((await db.scalars(query)).all())
    members = await _memberships(db, [u.user_id for u in users])
    return [
        UserView(u.user_id, u.email, u.disabled_at is not None, u.created_at, members[u.user_id])
        for u in users
    ]


async def get_user(db: AsyncSession, who: str) -> User:
    """A user by id (``usr_…``) or email; 404 otherwise."""
    user = await db.get(User, who) if who.startswith("usr_") else await find_user(db, who)
    if user is None:
        raise NotFound("no such user")
    return user


async def show_user(db: AsyncSession, who: str) -> UserView:
    user = await get_user(db, who)
    members = await _memberships(db, [user.user_id])
    return UserView(
        user.user_id,
        user.email,
        user.disabled_at is not None,
        user.created_at,
        members[user.user_id],
    )


async def reset_password(
    db: AsyncSession, *, who: str, password: str, actor: Actor, now: datetime
) -> User:
    """A new password (12-1 024 characters); the old one stops working at once."""
    check_password(password)
    user = await get_user(db, who)
    user.password_hash = await hash_password(password)
    record_event(
        db,
        type="user.password_reset",
        actor=actor,
        subject_type="user",
        subject_id=user.user_id,
        merchant_id=None,
        now=now,
    )
    await db.flush()
    return user


async def set_user_disabled(
    db: AsyncSession, *, who: str, disabled: bool, actor: Actor, now: datetime
) -> User:
    """A disabled user cannot sign in, and a portal session of theirs ends at its next page."""
    user = await get_user(db, who)
    if (user.disabled_at is not None) != disabled:
        user.disabled_at = now if disabled else None
        record_event(
            db,
            type="user.disabled" if disabled else "user.enabled",
            actor=actor,
            subject_type="user",
            subject_id=user.user_id,
            merchant_id=None,
            now=now,
        )
        await db.flush()
    return user


async def is_disabled(db: AsyncSession, user_id: str) -> bool:
    disabled_at = await db.scalar(select(User.disabled_at).where(User.user_id == user_id))
    return disabled_at is not None
