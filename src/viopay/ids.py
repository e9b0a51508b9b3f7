"""Random, prefixed identifiers (PROTOCOL §0) and the clock."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str, length: int = 20) -> str:
    """``prefix`` + ``length`` random base-36 characters (~103 bits for 20): one draw of
    enough random bits, written in base 36 (a character at a time costs a draw each)."""
    value = secrets.randbits(length * 6)  # 2**120 ≫ 36**20: the modulo bias is below 2**-16
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 36)
        chars.append(_ALPHABET[digit])
    return prefix + "".join(chars)


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(value: datetime) -> str:
    """Response time format: UTC, ``Z``, whole seconds, truncated."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
