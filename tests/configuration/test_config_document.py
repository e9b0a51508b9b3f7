"""The config document of POST /pos/config (PROTOCOL §3.8), its schema and its ETag."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from viopay.configuration.document import build_config_document, config_etag
from viopay.configuration.schemas import ConfigDocument, config_document_schema
from viopay.devices.models import Device, DeviceStatus
from viopay.errors import InvalidState
from viopay.merchants.config import new_config
from viopay.merchants.models import Merchant

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TOP_LEVEL = {"config_version", "terminal", "emv", "security", "branding", "merchant"}
TERMINAL = {
    "terminal_id",
    "device_id",
    "label",
    "merchant_id",
    "merchant_name",
    "currency",
    "country",
    "timezone",
}
EMV = {
    "terminal_type",
    "terminal_capabilities",
    "additional_terminal_capabilities",
    "country_code",
    "currency_code",
    "currency_exponent",
    "aids",
    "ca_public_keys",
}
AID = {
    "aid",
    "label",
    "application_version",
    "floor_limit",
    "contactless_limit",
    "cvm_limit",
    "tac_default",
    "tac_denial",
    "tac_online",
}
CAPK = {"rid", "index", "modulus", "exponent", "checksum", "expires"}


def _merchant(**fields: Any) -> Merchant:
    values = {
        "merchant_id": "mer_abc",
        "name": "Corner Coffee",
        "currency": "USD",
        "country": "US",
        "timezone": "America/Los_Angeles",
    } | fields
    return Merchant(**values)


def _device(label: str | None = "Front counter") -> Device:
    return Device(
        device_id="POS-8F3A2C91",
        status=DeviceStatus.claimed,
        merchant_id="mer_abc",
        terminal_id="TID-004812",
        label=label,
    )


def _document(
    merchant: Merchant | None = None, *, hmac_key_id: str = "mac-key-1", **kwargs: Any
) -> dict[str, Any]:
    merchant = merchant or _merchant()
    return build_config_document(
        merchant=merchant,
        merchant_config=kwargs.pop("merchant_config", new_config(merchant, now=NOW)),
        device=kwargs.pop("device", _device()),
        terminal_id="TID-004812",
        hmac_key_id=hmac_key_id,
        **kwargs,
    )


def test_the_document_has_exactly_the_members_of_the_protocol() -> None:
    document = _document()
    assert set(document) == TOP_LEVEL
    assert set(document["terminal"]) == TERMINAL
    assert set(document["emv"]) == EMV
    assert all(set(aid) == AID for aid in document["emv"]["aids"])
    assert all(set(key) == CAPK for key in document["emv"]["ca_public_keys"])
    assert document["security"] == {
        "hmac_key_id": "mac-key-1",
        "clock_skew_seconds": 300,
        "pin_timeout_seconds": 30,
        "offline": {"allowed": False, "max_amount": 0, "max_count": 0},
    }
    assert document["branding"] == {
        "display_name": "Corner Coffee",
        "primary_color": "#1A73E8",
        "logo_url": None,
        "receipt_header": "",
        "receipt_footer": "Thank you",
    }
    assert document["merchant"] == {
        "tip": {"enabled": True, "percentages": [15, 18, 20], "allow_custom": True},
        "tax": {"enabled": False, "rate_bps": 0, "inclusive": False},
        "surcharge": {"enabled": False, "rate_bps": 0, "max_amount": 0},
    }
    assert document["config_version"] == 1


def test_terminal_and_emv_values() -> None:
    document = _document()
    assert document["terminal"] == {
        "terminal_id": "TID-004812",
        "device_id": "POS-8F3A2C91",
        "label": "Front counter",
        "merchant_id": "mer_abc",
        "merchant_name": "Corner Coffee",
        "currency": "USD",
        "country": "US",
        "timezone": "America/Los_Angeles",
    }
    emv = document["emv"]
    assert (
        emv["terminal_type"],
        emv["terminal_capabilities"],
        emv["additional_terminal_capabilities"],
    ) == ("22", "E0F8C8", "F000F0A001")
    assert (emv["country_code"], emv["currency_code"], emv["currency_exponent"]) == (
        "0840",
        "0840",
        2,
    )
    aids = {aid["aid"]: aid for aid in emv["aids"]}
    assert aids["A0000000031010"] == {
        "aid": "A0000000031010",
        "label": "VISA CREDIT",
        "application_version": "0096",
        "floor_limit": 0,
        "contactless_limit": 20000,
        "cvm_limit": 10000,
        "tac_default": "DC4000A800",
        "tac_denial": "0010000000",
        "tac_online": "DC4004F800",
    }
    rids = {aid[:10] for aid in aids}
    # Visa, Visa US debit, Mastercard/Maestro, Amex, Discover, JCB, UnionPay, Interac.
    assert rids == {
        "A000000003",
        "A000000098",
        "A000000004",
        "A000000025",
        "A000000152",
        "A000000065",
        "A000000333",
        "A000000277",
    }
    assert {"A0000000041010", "A0000000043060", "A00000002501"} <= aids.keys()


@pytest.mark.parametrize(
    ("currency", "country", "codes"),
    [
        ("EUR", "DE", ("0276", "0978", 2)),
        ("JPY", "JP", ("0392", "0392", 0)),
        ("GBP", "GB", ("0826", "0826", 2)),
        ("KWD", "KW", ("0414", "0414", 3)),
        ("CAD", "CA", ("0124", "0124", 2)),
    ],
)
def test_numeric_codes_follow_the_merchant(
    currency: str, country: str, codes: tuple[str, str, int]
) -> None:
    emv = _document(_merchant(currency=currency, country=country))["emv"]
    assert (emv["country_code"], emv["currency_code"], emv["currency_exponent"]) == codes


def test_an_unknown_currency_needs_an_operator_override() -> None:
    merchant = _merchant(currency="XAF", country="CM")
    with pytest.raises(InvalidState, match="currency_code"):
        _document(merchant)
    overrides = {"country_code": "0120", "currency_code": "0950", "currency_exponent": 0}
    emv = _document(merchant, emv_overrides=overrides)["emv"]
    assert (emv["country_code"], emv["currency_code"], emv["currency_exponent"]) == (
        "0120",
        "0950",
        0,
    )


def test_overrides_replace_members_whole() -> None:
    merchant = _merchant()
    config = new_config(merchant, now=NOW)
    only_visa = [
        {
            "aid": "A0000000031010",
            "label": "VISA",
            "application_version": "008C",
            "floor_limit": 0,
            "contactless_limit": 5000,
            "cvm_limit": 2500,
            "tac_default": "DC4000A800",
            "tac_denial": "0010000000",
            "tac_online": "DC4004F800",
        }
    ]
    config.emv_overrides = {"terminal_type": "21", "aids": only_visa}
    emv = _document(merchant, merchant_config=config)["emv"]
    assert emv["terminal_type"] == "21" and emv["aids"] == only_visa
    assert emv["terminal_capabilities"] == "E0F8C8" and emv["ca_public_keys"]  # untouched


def test_the_document_validates_against_the_published_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")  # a dev dependency
    schema = config_document_schema()
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    for document in (_document(), _document(device=_device(label=None))):
        validator.validate(document)
    assert set(schema["required"]) == TOP_LEVEL
    broken = _document()
    del broken["security"]["offline"]
    assert not validator.is_valid(broken)
    broken = _document()
    broken["emv"]["aids"][0]["tac_default"] = "dc40"
    assert not validator.is_valid(broken)


def test_the_published_schema_and_the_models_agree_on_a_round_trip() -> None:
    document = _document()
    assert ConfigDocument.model_validate(document).model_dump(mode="json") == document


def test_etag_is_stable_and_follows_the_document() -> None:
    merchant = _merchant()
    config = new_config(merchant, now=NOW)
    first = config_etag(_document(merchant, merchant_config=config))
    assert first == config_etag(_document(merchant, merchant_config=config))
    assert first.startswith('"') and first.endswith('"') and len(first) == 66
    assert (
        config_etag(_document(merchant, merchant_config=config, hmac_key_id="mac-key-2")) != first
    )
    config.config_version = 2
    assert config_etag(_document(merchant, merchant_config=config)) != first


# --- HTTP -----------------------------------------------------------------------------------


def test_schema_endpoint_needs_no_auth(api: httpx.Client) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    response = api.get("/pos/config/schema")
    assert response.status_code == 200, response.text
    assert response.json() == config_document_schema()
    jsonschema.Draft202012Validator(response.json()).validate(_document())
