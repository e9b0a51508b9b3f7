"""Signed-request headers shared by attest (§2.2) and the charge endpoints (§2.4):
``X-Key-Id``, ``X-Timestamp``, ``X-Nonce``, ``X-Signature``, the timestamp window and the
replay guard."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from fastapi import Request

from viopay.cache import Cache
from viopay.errors import InvalidHeader, MissingHeader, NonceReused, TimestampOutOfWindow
from viopay.ids import rfc3339
from viopay_device.protocol.signing import SIGNATURE_RE

KEY_ID_RE = re.compile(r"[\x21-\x7E]{1,128}")
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{8,128}")
# RFC 3339 date-time: `T`/`t`, optional fraction, `Z`/`z` or a numeric offset. ASCII digits only.
_RFC3339 = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]"
    r"(?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2})(?:\.(?P<frac>[0-9]+))?"
    r"(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))"
)
PAST_WINDOW = timedelta(seconds=300)
FUTURE_WINDOW = timedelta(seconds=60)


def header(request: Request, name: str) -> str:
    value = request.headers.get(name)
    if value is None:
        raise MissingHeader(name)
    return value


@dataclass(frozen=True)
class SignedHeaders:
    """The signature headers, each exactly as sent, plus the parsed timestamp."""

    key_id: str
    timestamp: str
    moment: datetime
    nonce: str
    signature: str


def parse_rfc3339(text: str) -> datetime:
    """Any RFC 3339 date-time, as an aware UTC datetime; ValueError otherwise.

    A leap second (``:60``) reads as the first instant of the next minute.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("not an RFC 3339 date-time")
    hour, minute, second = int(match["h"]), int(match["m"]), int(match["s"])
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError("not an RFC 3339 date-time")
    offset = timedelta(0)
    if match["sign"]:
        oh, om = int(match["oh"]), int(match["om"])
        if oh > 23 or om > 59:
            raise ValueError("not an RFC 3339 date-time")
        offset = timedelta(hours=oh, minutes=om) * (-1 if match["sign"] == "-" else 1)
    micro = int((match["frac"] or "0")[:6].ljust(6, "0"))
    base = datetime.fromisoformat(match["date"]).replace(  # ValueError on an impossible date
        hour=hour, minute=minute, second=min(second, 59), microsecond=micro, tzinfo=timezone(offset)
    )
    return (base + timedelta(seconds=second - min(second, 59))).astimezone(UTC)


def parse_signed_headers(request: Request) -> SignedHeaders:
    """Presence and form of the four signature headers (400 missing_header / invalid_header)."""
    key_id = header(request, "X-Key-Id")
    if not KEY_ID_RE.fullmatch(key_id):
        raise InvalidHeader("X-Key-Id", "must be 1-128 printable ASCII characters without spaces")
    timestamp = header(request, "X-Timestamp")
    try:
        moment = parse_rfc3339(timestamp)
    except (ValueError, OverflowError):
        raise InvalidHeader("X-Timestamp", "must be an RFC 3339 date-time") from None
    nonce = header(request, "X-Nonce")
    if not NONCE_RE.fullmatch(nonce):
        raise InvalidHeader("X-Nonce", "must be 8-128 characters of [A-Za-z0-9_-]")
    signature = header(request, "X-Signature")
    if not SIGNATURE_RE.match(signature):
        raise InvalidHeader("X-Signature", "must be v1= followed by the base64 of 32 bytes")
    return SignedHeaders(
        key_id=key_id, timestamp=timestamp, moment=moment, nonce=nonce, signature=signature
    )


def check_timestamp(moment: datetime, *, now: datetime) -> None:
    """Accept ``now - 300 s <= t <= now + 60 s``; else 401 with the server's time."""
    if not now - PAST_WINDOW <= moment <= now + FUTURE_WINDOW:
        raise TimestampOutOfWindow(server_time=rfc3339(now))


def nonce_ttl(moment: datetime, *, now: datetime) -> float:
    """Keep a nonce until its request's own timestamp is 300 s old (at least 1 s)."""
    return max(1.0, math.ceil((moment + PAST_WINDOW - now).total_seconds()))


async def spend_nonce(
    cache: Cache, *, scope: str, nonce: str, moment: datetime, now: datetime
) -> None:
    """Spend ``nonce`` in ``scope`` (e.g. ``device:POS-…``) atomically; 401 nonce_reused if it was.

    Call only once the signature has verified, so a forger cannot burn a device's nonces.
    """
    stored = await cache.set_nx(f"nonce:{scope}:{nonce}", b"1", ttl=nonce_ttl(moment, now=now))
    if not stored:
        raise NonceReused()
