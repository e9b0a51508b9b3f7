"""Random, prefixed identifiers (PROTOCOL §0) and the clock."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str, length: int = 20) -> str:
    """``prefix`` + ``length`` random base-36 characters (~103 bits for 20)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(value: datetime) -> str:
    """Response time format: UTC, ``Z``, whole seconds, truncated."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
