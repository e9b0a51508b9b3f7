"""The stored terminal_parameters documents (PROTOCOL §3.9, §6)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from viopay.db import Base

DEFAULT_KEY = "__default__"


class TerminalParameters(Base):
    """One gzip stream per terminal, or the operator's default under :data:`DEFAULT_KEY`.

    Kept compressed, exactly as served, so the size and SHA-256 the terminal is told are the
    stored bytes' and every server answers the same chunks.
    """

    __tablename__ = "terminal_parameters"
    __table_args__ = (CheckConstraint("size = length(gzip)", name="size_matches"),)

    # A terminal id (not a foreign key: the default row has none).
    terminal_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    gzip: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime]
