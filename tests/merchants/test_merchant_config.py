"""The merchant config (PROTOCOL §3.8, §6): defaults, validation, versions, roles, events, CLI."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from support.helpers import Admin, Backend, MakeMerchant
from viopay.audit import Actor, AuditEvent
from viopay.deps import validate
from viopay.errors import InvalidRequest
from viopay.merchants import config, service
from viopay.merchants.config import MerchantConfigIn
from viopay.merchants.models import Merchant, MerchantConfig
from viopay.runtime import Runtime

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DEFAULTS: dict[str, Any] = {
    "tip": {"enabled": True, "percentages": [15, 18, 20], "allow_custom": True},
    "tax": {"enabled": False, "rate_bps": 0, "inclusive": False},
    "surcharge": {"enabled": False, "rate_bps": 0, "max_amount": 0},
}
BRANDING = {
    "display_name": "Corner Coffee",
    "primary_color": "#1A73E8",
    "logo_url": None,
    "receipt_header": "",
    "receipt_footer": "Thank you",
}


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


def _fields(data: Any) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        validate(MerchantConfigIn, data)
    return {e["field"]: e["message"] for e in caught.value.extra["errors"]}


# --- the models, without a database ---------------------------------------------------------


def test_defaults_of_a_new_merchant() -> None:
    merchant = Merchant(merchant_id="mer_x", name="Corner Coffee", currency="USD", country="US")
    made = config.new_config(merchant, now=NOW)
    assert config.config_view(made) == {"config_version": 1, **DEFAULTS, "branding": BRANDING}
    assert made.emv_overrides == {}


def test_the_default_display_name_is_one_line_of_the_merchant_name() -> None:
    for name, shown in (
        ("  Corner\n Coffee\t", "Corner Coffee"),
        ("\x00 ", "Merchant"),
        ("x" * 250, "x" * 200),
    ):
        merchant = Merchant(merchant_id="mer_x", name=name, currency="USD", country="US")
        made = config.new_config(merchant, now=NOW)
        assert made.branding["display_name"] == shown
        config.MerchantConfigOut.of(made)  # valid as stored


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tax": {"enabled": True, "rate_bps": 10_001, "inclusive": False}}, "tax.rate_bps"),
        ({"tax": {"enabled": True, "rate_bps": -1, "inclusive": False}}, "tax.rate_bps"),
        ({"tax": {"enabled": True, "rate_bps": "825", "inclusive": False}}, "tax.rate_bps"),
        ({"tax": {"enabled": 1, "rate_bps": 825, "inclusive": False}}, "tax.enabled"),
        ({"tax": {"enabled": True, "inclusive": False}}, "tax.rate_bps"),
        (
            {"surcharge": {"enabled": True, "rate_bps": 300, "max_amount": -5}},
            "surcharge.max_amount",
        ),
        (
            {"tip": {"enabled": True, "percentages": [15, 101], "allow_custom": True}},
            "tip.percentages.1",
        ),
        (
            {"tip": {"enabled": True, "percentages": [15, True], "allow_custom": True}},
            "tip.percentages.1",
        ),
        (
            {"tip": {"enabled": True, "percentages": [15, 18.5], "allow_custom": True}},
            "tip.percentages.1",
        ),
        (
            {"tip": {"enabled": True, "percentages": list(range(11)), "allow_custom": True}},
            "tip.percentages",
        ),
        (
            {"tip": {"enabled": True, "percentages": [15, 15], "allow_custom": True}},
            "tip.percentages",
        ),
        ({"tip": None}, "tip"),
        ({"tip": [15, 18]}, "tip"),
        ({"branding": BRANDING | {"primary_color": "1A73E8"}}, "branding.primary_color"),
        ({"branding": BRANDING | {"primary_color": "#1A73E"}}, "branding.primary_color"),
        ({"branding": BRANDING | {"logo_url": "http://example.com/logo.png"}}, "branding.logo_url"),
        ({"branding": BRANDING | {"logo_url": "https:///nohost"}}, "branding.logo_url"),
        ({"branding": BRANDING | {"display_name": ""}}, "branding.display_name"),
        ({"branding": BRANDING | {"display_name": "x" * 201}}, "branding.display_name"),
        ({"branding": BRANDING | {"receipt_footer": "y" * 501}}, "branding.receipt_footer"),
        ({"branding": BRANDING | {"receipt_header": "bell\x07"}}, "branding.receipt_header"),
    ],
)
def test_invalid_values_name_their_field(body: dict[str, Any], field: str) -> None:
    assert field in _fields(body)


def test_valid_values_are_kept_and_unknown_members_ignored() -> None:
    body = validate(
        MerchantConfigIn,
        {
            "tip": {"enabled": False, "percentages": [], "allow_custom": False, "extra": 1},
            "branding": BRANDING
            | {"primary_color": "#ff8800", "logo_url": "https://cdn.example/l.png"},
            "something": "else",
        },
    )
    given = body.given()
    assert set(given) == {"tip", "branding"}
    assert given["tip"] == {"enabled": False, "percentages": [], "allow_custom": False}
    assert given["branding"]["primary_color"] == "#FF8800"
    assert given["branding"]["receipt_footer"] == "Thank you"


def test_multi_line_receipt_text_is_allowed() -> None:
    body = validate(
        MerchantConfigIn, {"branding": BRANDING | {"receipt_header": "12 Main St\nSpringfield"}}
    )
    assert body.given()["branding"]["receipt_header"] == "12 Main St\nSpringfield"


# --- services, on both backends -------------------------------------------------------------


async def _merchant(runtime: Any, name: str = "Corner Coffee") -> Merchant:
    async with runtime.sessions() as db, db.begin():
        return await service.create_merchant(
            db,
            name=name,
            currency="USD",
            country="US",
            timezone="UTC",
            actor=Actor.operator(),
            now=NOW,
        )


async def _events(runtime: Any, merchant_id: str) -> list[AuditEvent]:
    async with runtime.sessions() as db:
        query = select(AuditEvent).where(
            AuditEvent.merchant_id == merchant_id, AuditEvent.type == "merchant_config.updated"
        )
        return list((await db.scalars(query.order_by(AuditEvent.created_at))).all())


async def test_a_new_merchant_starts_at_version_one(runtime: Runtime) -> None:
    merchant = await _merchant(runtime)
    async with runtime.sessions() as db, db.begin():
        made = await config.get_config(db, merchant=merchant, now=NOW)
    assert config.config_view(made) == {"config_version": 1, **DEFAULTS, "branding": BRANDING}


async def test_changes_bump_the_version_and_record_an_event(runtime: Runtime) -> None:
    merchant = await _merchant(runtime)
    tax = {"enabled": True, "rate_bps": 825, "inclusive": False}
    later = NOW + timedelta(minutes=1)
    async with runtime.sessions() as db, db.begin():
        updated = await config.update_config(
            db,
            merchant=merchant,
            changes=validate(MerchantConfigIn, {"tax": tax, "tip": DEFAULTS["tip"]}),
            actor=Actor("user", "alice"),
            now=later,
        )
        assert updated.config_version == 2 and updated.tax == tax and updated.updated_at == later
    [event] = await _events(runtime, merchant.merchant_id)
    assert (event.subject_type, event.subject_id) == ("merchant_config", merchant.merchant_id)
    assert (event.actor_type, event.actor_id) == ("user", "alice")
    assert event.data["config_version"] == 2
    assert event.data["sections"] == ["tax"]  # tip was sent unchanged
    assert event.data["changes"] == {"tax": tax}


async def test_a_write_that_changes_nothing_changes_nothing(runtime: Runtime) -> None:
    merchant = await _merchant(runtime)
    async with runtime.sessions() as db, db.begin():
        same = await config.update_config(
            db,
            merchant=merchant,
            changes=validate(MerchantConfigIn, DEFAULTS | {"branding": BRANDING}),
            actor=Actor.operator(),
            now=NOW,
        )
        empty = await config.update_config(
            db,
            merchant=merchant,
            changes=validate(MerchantConfigIn, {}),
            actor=Actor.operator(),
            now=NOW,
        )
    assert same.config_version == empty.config_version == 1
    assert await _events(runtime, merchant.merchant_id) == []


async def test_a_merchant_without_a_config_row_gets_the_defaults_once(runtime: Runtime) -> None:
    """Merchants made before the config table existed: made on first read, concurrently safe."""
    merchant = await _merchant(runtime, name="Old shop")
    async with runtime.sessions() as db, db.begin():
        await db.delete(await db.get(MerchantConfig, merchant.merchant_id))

    async def read() -> int:
        async with runtime.sessions() as db, db.begin():
            return (await config.get_config(db, merchant=merchant, now=NOW)).config_version

    assert list(await asyncio.gather(read(), read(), read())) == [1, 1, 1]
    async with runtime.sessions() as db:
        made = await db.get(MerchantConfig, merchant.merchant_id)
        assert made is not None and made.branding["display_name"] == "Old shop"


# --- HTTP: GET|PUT /merchant/config ---------------------------------------------------------


def test_get_config_answers_the_defaults(make_merchant: MakeMerchant) -> None:
    owner = make_merchant()
    response = owner.http.get("/merchant/config")
    assert response.status_code == 200, response.text
    assert response.json() == {"config_version": 1, **DEFAULTS, "branding": BRANDING}


def test_staff_may_read_but_not_change(make_merchant: MakeMerchant) -> None:
    staff = make_merchant(role="staff")
    assert staff.http.get("/merchant/config").status_code == 200
    put = staff.http.put("/merchant/config", json={"tax": DEFAULTS["tax"] | {"enabled": True}})
    _problem(put, 403, "forbidden")
    # Role comes before the body (§1): an invalid body is still 403 for staff.
    _problem(staff.http.put("/merchant/config", content=b"{nope"), 403, "forbidden")
    assert staff.http.get("/merchant/config").json()["config_version"] == 1


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_owner_and_admin_change_sections(make_merchant: MakeMerchant, role: str) -> None:
    ctx = make_merchant(role=role)
    surcharge = {"enabled": True, "rate_bps": 300, "max_amount": 500}
    branding = BRANDING | {
        "receipt_header": "Open 7-19",
        "logo_url": "https://cdn.example/logo.png",
    }
    response = ctx.http.put("/merchant/config", json={"surcharge": surcharge, "branding": branding})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "config_version": 2,
        "tip": DEFAULTS["tip"],
        "tax": DEFAULTS["tax"],
        "surcharge": surcharge,
        "branding": branding,
    }
    assert ctx.http.get("/merchant/config").json() == body
    again = ctx.http.put("/merchant/config", json={"surcharge": surcharge})
    assert again.json()["config_version"] == 2


def test_invalid_put_is_400_with_field_errors(make_merchant: MakeMerchant) -> None:
    owner = make_merchant()
    response = owner.http.put(
        "/merchant/config",
        json={
            "tax": {"enabled": True, "rate_bps": 20_000, "inclusive": False},
            "branding": BRANDING | {"primary_color": "blue"},
        },
    )
    body = _problem(response, 400, "invalid_request")
    fields = {error["field"] for error in body["errors"]}
    assert {"tax.rate_bps", "branding.primary_color"} <= fields
    assert all(error["message"] for error in body["errors"])
    assert owner.http.get("/merchant/config").json()["config_version"] == 1
    _problem(
        owner.http.put(
            "/merchant/config", content=b"[]", headers={"content-type": "application/json"}
        ),
        400,
        "invalid_request",
    )
    _problem(
        owner.http.put("/merchant/config", content=b"{}", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )


def test_changes_appear_in_the_event_list(make_merchant: MakeMerchant) -> None:
    owner = make_merchant()
    tip = {"enabled": True, "percentages": [10, 15, 20, 25], "allow_custom": False}
    assert owner.http.put("/merchant/config", json={"tip": tip}).status_code == 200
    events = owner.http.get("/merchant/events").json()["data"]
    [event] = [e for e in events if e["type"] == "merchant_config.updated"]
    assert event["subject"] == {"type": "merchant_config", "id": owner.merchant_id}
    assert event["actor"] == {"type": "client", "id": owner.subject}
    assert event["data"]["sections"] == ["tip"] and event["data"]["config_version"] == 2


def test_merchant_config_needs_a_bearer_token(api: httpx.Client) -> None:
    _problem(api.get("/merchant/config"), 401, "unauthorized")


# --- the operator CLI -----------------------------------------------------------------------


def test_cli_show_and_set(backend: Backend, admin: Admin, tmp_path: Path) -> None:
    merchant = admin.merchant(name="CLI shop")
    shown = backend.cli("merchant", "config", "show", merchant["merchant_id"])
    assert shown == {
        "config_version": 1,
        **DEFAULTS,
        "branding": BRANDING | {"display_name": "CLI shop"},
    }
    changes = tmp_path / "config.json"
    tax = {"enabled": True, "rate_bps": 725, "inclusive": True}
    changes.write_bytes(orjson.dumps({"tax": tax}))
    updated = backend.cli(
        "merchant", "config", "set", merchant["merchant_id"], "--file", str(changes)
    )
    assert updated["config_version"] == 2 and updated["tax"] == tax
