"""Signed-request headers (PROTOCOL §2.2): RFC 3339 timestamps, the window, the nonce guard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viopay.cache import MemoryCache
from viopay.errors import NonceReused, TimestampOutOfWindow
from viopay.signatures import check_timestamp, nonce_ttl, parse_rfc3339, spend_nonce

NOW = datetime(2025, 12, 13, 14, 25, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-12-13T14:25:30Z", NOW),
        ("2025-12-13t14:25:30z", NOW),
        ("2025-12-13T16:25:30+02:00", NOW),
        ("2025-12-13T09:55:30-04:30", NOW),
        ("2025-12-13T14:25:30-00:00", NOW),
        ("2025-12-13T14:25:30.5Z", NOW + timedelta(milliseconds=500)),
        ("2025-12-13T14:25:30.123456789Z", NOW + timedelta(microseconds=123456)),
        ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, tzinfo=UTC)),
    ],
)
def test_rfc3339_forms(text: str, expected: Any) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2025-12-13 14:25:30Z",  # a space is not RFC 3339
        "2025-12-13T14:25:30",  # no offset
        "2025-12-13T14:25Z",
        "2025-12-13T14:25:30.Z",
        "2025-12-13T14:25:30+0200",
        "2025-12-13T14:25:30+24:00",
        "2025-12-13T24:00:00Z",
        "2025-02-30T14:25:30Z",
        "0000-01-01T00:00:00Z",
        "2025-12-13T14:25:30Z\n",
        "２０２５-12-13T14:25:30Z",  # non-ASCII digits
        "1765635930",
    ],
)
def test_rfc3339_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    )
)
def test_rfc3339_round_trip(moment: datetime) -> None:
    assert parse_rfc3339(moment.isoformat().replace("+00:00", "Z")) == moment


@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        (timedelta(seconds=-300), True),
        (timedelta(seconds=-300, microseconds=-1), False),
        (timedelta(seconds=-301), False),
        (timedelta(0), True),
        (timedelta(seconds=60), True),
        (timedelta(seconds=60, microseconds=1), False),
        (timedelta(seconds=61), False),
    ],
)
def test_window_edges(offset: Any, ok: bool) -> None:
    if ok:
        check_timestamp(NOW + offset, now=NOW)
        return
    with pytest.raises(TimestampOutOfWindow) as caught:
        check_timestamp(NOW + offset, now=NOW)
    assert caught.value.extra == {"server_time": "2025-12-13T14:25:30Z"}


def test_nonce_retention_follows_the_request_timestamp() -> None:
    assert nonce_ttl(NOW, now=NOW) == 300
    assert nonce_ttl(NOW + timedelta(seconds=60), now=NOW) == 360  # stamped 60 s ahead
    assert nonce_ttl(NOW - timedelta(seconds=299.5), now=NOW) == 1
    assert nonce_ttl(NOW - timedelta(seconds=300), now=NOW) == 1  # at least 1 s


async def test_nonce_is_spent_once_per_scope() -> None:
    cache = MemoryCache()
    await spend_nonce(cache, scope="device:POS-00000001", nonce="n0nce-abc", moment=NOW, now=NOW)
    with pytest.raises(NonceReused):
        await spend_nonce(
            cache, scope="device:POS-00000001", nonce="n0nce-abc", moment=NOW, now=NOW
        )
    # Another device may use the same nonce.
    await spend_nonce(cache, scope="device:POS-00000002", nonce="n0nce-abc", moment=NOW, now=NOW)


async def test_nonce_expires_with_its_retention() -> None:
    clock = [1000.0]
    cache = MemoryCache(clock=lambda: clock[0])
    stamped = NOW - timedelta(seconds=200)  # retained 100 s more
    await spend_nonce(cache, scope="device:X", nonce="abcdefgh", moment=stamped, now=NOW)
    clock[0] += 99
    with pytest.raises(NonceReused):
        await spend_nonce(cache, scope="device:X", nonce="abcdefgh", moment=stamped, now=NOW)
    clock[0] += 2
    await spend_nonce(cache, scope="device:X", nonce="abcdefgh", moment=stamped, now=NOW)
