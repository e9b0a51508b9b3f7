"""Pure pieces of the portal: the signed cookie, redirects, formatting and form mapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from starlette.datastructures import FormData, QueryParams

from support.helpers import present
from viopay.auth.issuer import Principal
from viopay.ids import rfc3339
from viopay.money import money
from viopay.portal.forms import charge_filters, parse_config_form
from viopay.portal.rendering import ago, sentence
from viopay.portal.session import (
    COOKIE_MAX_AGE,
    MAX_SIGNED_IN,
    BrowserState,
    CookieCodec,
    session_end,
)
from viopay.portal.web import safe_next

NOW = 1_800_000_000.0


def test_the_cookie_round_trips_and_refuses_any_change_or_old_age() -> None:
    codec = CookieCodec(b"k" * 32)
    state = BrowserState(
        csrf="token", sid="sid-1", oidc={"state": "s"}, flashes=[("info", "hello")]
    )
    value = codec.dumps(state, now=NOW)
    back = codec.loads(value, now=NOW + 10)
    assert back is not None and (back.csrf, back.sid, back.oidc, back.flashes) == (
        "token",
        "sid-1",
        {"state": "s"},
        [("info", "hello")],
    )
    payload, mac = value.split(".")
    assert (
        codec.loads(payload[:-1] + ("A" if payload[-1] != "A" else "B") + "." + mac, now=NOW)
        is None
    )
    assert codec.loads(value + "x", now=NOW) is None
    assert codec.loads("garbage", now=NOW) is None
    assert CookieCodec(b"o" * 32).loads(value, now=NOW) is None  # another key
    assert codec.loads(value, now=NOW + COOKIE_MAX_AGE + 1) is None


@pytest.mark.parametrize(
    "target, expected",
    [
        (None, "/portal/devices"),
        ("/portal/charges?status=declined", "/portal/charges?status=declined"),
        ("https://evil.example/portal/", "/portal/devices"),
        ("//evil.example/portal/", "/portal/devices"),
        ("/portal/\\\\evil.example", "/portal/devices"),
        ("/admin/devices", "/portal/devices"),
        ("javascript:alert(1)", "/portal/devices"),
    ],
)
def test_next_is_only_ever_a_portal_path(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_formatting() -> None:
    assert money(1250, "USD") == "$12.50"
    assert money(123456789, "EUR") == "€1,234,567.89"
    assert money(500, "JPY") == "¥500"
    assert money(1234, "KWD") == "1.234 KWD"
    assert money(99, "CHF") == "0.99 CHF"
    assert sentence("must be an https URL") == "Must be an https URL."
    assert sentence("Done!") == "Done!"
    assert ago(None) == "never"


def _form(**fields: str) -> FormData:
    base = {
        "tip.enabled": "on",
        "tip.percentages": "15, 18, 20",
        "tip.allow_custom": "on",
        "tax.rate": "0",
        "surcharge.rate": "0",
        "surcharge.max_amount": "0",
        "branding.display_name": "Shop",
        "branding.primary_color": "#1a73e8",
        "branding.logo_url": "",
        "branding.receipt_header": "",
        "branding.receipt_footer": "Thanks\r\nBye",
    }
    return FormData({**base, **fields})


def test_the_config_form_maps_to_the_apis_model_and_its_errors_back_to_fields() -> None:
    parsed = parse_config_form(_form(), currency="USD")
    assert not parsed.errors and parsed.changes is not None
    sections = parsed.changes.given()
    assert sections["tip"] == {"enabled": True, "percentages": [15, 18, 20], "allow_custom": True}
    assert sections["tax"] == {"enabled": False, "rate_bps": 0, "inclusive": False}
    assert (
        sections["branding"]["logo_url"] is None
        and sections["branding"]["receipt_footer"] == "Thanks\nBye"
    )
    assert sections["branding"]["primary_color"] == "#1A73E8"

    bad = parse_config_form(
        _form(**{"tip.percentages": "15, x", "tax.rate": "100.01", "branding.display_name": "  "}),
        currency="USD",
    )
    assert bad.changes is None
    assert set(bad.errors) == {"tip.percentages", "tax.rate", "branding.display_name"}
    assert not any("Input should" in message for message in bad.errors.values())
    jpy = parse_config_form(
        _form(**{"surcharge.rate": "2.5", "surcharge.max_amount": "300"}), currency="JPY"
    )
    assert jpy.changes is not None and jpy.changes.given()["surcharge"]["max_amount"] == 300
    assert jpy.changes.given()["surcharge"]["rate_bps"] == 250
    cents = parse_config_form(_form(**{"surcharge.max_amount": "1.5"}), currency="JPY")
    assert cents.errors == {"surcharge.max_amount": "JPY amounts have no decimals."}
    assert bad.values["tip.percentages"] == "15, x"  # shown back as typed


def test_charge_filters_are_days_of_the_merchants_zone() -> None:
    filters, spec = charge_filters(
        QueryParams("status=approved&terminal=TID-000001&from=2026-11-01&to=2026-11-30&q=+ord+"),
        merchant_id="mer_1",
        timezone="America/New_York",
    )
    assert not filters.errors
    assert rfc3339(present(spec.created_from)) == "2026-11-01T04:00:00Z"  # EDT midnight
    # The end day is included: created_to is the (EST) midnight after it.
    assert rfc3339(present(spec.created_to)) == "2026-12-01T05:00:00Z"
    assert spec.terminal_id == "TID-000001" and spec.status is not None
    assert spec.status.value == "approved" and spec.merchant_id == "mer_1"
    assert spec.q == "ord" and filters.query()["q"] == "ord"
    filters, _ = charge_filters(
        QueryParams("status=lost&from=2026-13-01&to=2026-01-01"), merchant_id="m", timezone="UTC"
    )
    assert set(filters.errors) == {"status", "from"}


def test_a_signed_in_session_lasts_as_long_as_the_provider_says() -> None:
    start = datetime.fromtimestamp(NOW, tz=UTC)
    token_end = start + timedelta(seconds=300)
    principal = Principal("sub", "user", frozenset(), "sid", token_end)
    # No refresh token: until the access token expires.
    assert session_end(principal, started_at=start, now=start) == token_end
    # Keycloak says how long its refresh token lasts.
    later = start + timedelta(hours=1)
    assert session_end(
        principal, started_at=start, now=later, refresh_expires_in=1800, refreshable=True
    ) == later + timedelta(seconds=1800)
    # Other providers do not: the next refresh tells, within the 12 h from sign-in.
    assert session_end(
        principal, started_at=start, now=later, refreshable=True
    ) == start + timedelta(seconds=MAX_SIGNED_IN)


@pytest.mark.parametrize(
    ("name", "typed"),
    [
        ("tax.rate", "sNaN"),
        ("tax.rate", "NaN"),
        ("surcharge.rate", "1e999999999"),
        ("surcharge.rate", "-1e-999999999"),
        ("tip.percentages", "\u00b2"),
        ("tip.percentages", "15, \u0663"),  # an Arabic-Indic three: a digit to str.isdigit
        ("tip.percentages", "1" * 5000),
    ],
)
def test_numbers_no_form_can_hold_are_field_errors(name: str, typed: str) -> None:
    """Found by fuzzing: each of these raised (a 500) instead of asking for a number."""
    parsed = parse_config_form(_form(**{name: typed}), currency="USD")
    assert parsed.changes is None and set(parsed.errors) == {name}


@pytest.mark.parametrize(
    ("query", "timezone"),
    [
        ("to=9999-12-31", "UTC"),  # the day after it does not exist
        ("from=0001-01-01", "Asia/Tokyo"),  # its midnight there is before year 1 in UTC
        ("from=1969-12-31", "UTC"),
    ],
)
def test_days_a_filter_cannot_name_are_field_errors(query: str, timezone: str) -> None:
    filters, spec = charge_filters(QueryParams(query), merchant_id="m", timezone=timezone)
    field_name = query.split("=")[0]
    assert filters.errors == {
        field_name: "Enter a date as YYYY-MM-DD, from 1970-01-01 to 9998-12-31."
    }
    assert spec.created_from is None and spec.created_to is None
    _, last = charge_filters(
        QueryParams("from=1970-01-01&to=9998-12-31"), merchant_id="m", timezone="Asia/Tokyo"
    )
    assert last.created_from is not None and last.created_to is not None
