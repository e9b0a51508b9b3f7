"""The master key check of PROTOCOL §6: the database keeps the check value of every master key
it was written with (never a key), and a process started with another key refuses to start.

Written against the :class:`~viopay.crypto.wrapping.KeyWrapper` interface only, so a wrapper
holding several master keys (rotation, an HSM) records and compares one check value each.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from viopay.crypto.wrapping import KeyWrapper, check_value
from viopay.db import Base


class MasterKeyCheck(Base):
    """The check value of a master key this database holds keys under."""

    __tablename__ = "master_key_checks"

    check_value: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime]


class MasterKeyMismatch(Exception):
    """The database was written under another master key."""

    def __init__(self, *, given: str, stored: list[str]) -> None:
        super().__init__(f"check value {given}, the database's {', '.join(stored)}")
        self.given = given
        self.stored = stored


async def verify_master_key(
    sessions: async_sessionmaker[AsyncSession], wrapper: KeyWrapper, *, now: datetime
) -> str:
    """Record the wrapper's check value on a database that has none yet; raise
    :class:`MasterKeyMismatch` if it has others. Returns the check value."""
    given = check_value(wrapper)
    for _ in range(2):  # a second pass reads what a process starting beside us just wrote
        async with sessions() as session:
            stored = list((await session.scalars(select(MasterKeyCheck.check_value))).all())
            if given in stored:
                return given
            if stored:
                raise MasterKeyMismatch(given=given, stored=sorted(stored))
            session.add(MasterKeyCheck(check_value=given, created_at=now))
            try:
                await session.commit()
                return given
            except IntegrityError:
                await session.rollback()
    raise MasterKeyMismatch(given=given, stored=[])
