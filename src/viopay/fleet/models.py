"""Leases of timers that must run in one process at a time (the fleet's offline check)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from viopay.db import Base


class TimerLease(Base):
    __tablename__ = "timer_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(80))
    until: Mapped[datetime | None]
