"""EMV defaults (PROTOCOL §3.8): CA public keys and their checksums, and the operator overrides."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from support.helpers import Admin, Backend, MakeMerchant
from viopay.configuration.emv import DEFAULT_AIDS, DEFAULT_CA_PUBLIC_KEYS
from viopay.configuration.emv_capks import PUBLISHED_CAPKS
from viopay.configuration.schemas import CaPublicKey, EmvOverrides, capk_checksum
from viopay.deps import validate
from viopay.errors import InvalidRequest


@pytest.mark.parametrize("key", PUBLISHED_CAPKS, ids=lambda k: f"{k.scheme}-{k.index}")
def test_published_checksums_verify(key: Any) -> None:
    """EMV Book 2: SHA-1 over RID || index || modulus || exponent equals the published value."""
    data = bytes.fromhex(key.rid + key.index + key.modulus + key.exponent)
    digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    assert digest.upper() == key.checksum
    assert (
        capk_checksum(rid=key.rid, index=key.index, modulus=key.modulus, exponent=key.exponent)
        == key.checksum
    )


def test_default_keys_are_realistic() -> None:
    assert len(DEFAULT_CA_PUBLIC_KEYS) == len(PUBLISHED_CAPKS)
    sizes = {len(key.modulus) * 4 for key in DEFAULT_CA_PUBLIC_KEYS}
    assert sizes == {1152, 1408, 1984}
    for key in DEFAULT_CA_PUBLIC_KEYS:
        assert int(key.modulus[:2], 16) >= 0x80  # full length: the top bit is set
        assert int(key.modulus, 16) % 2 == 1
        assert key.exponent in ("03", "010001")
    rids = {key.rid for key in DEFAULT_CA_PUBLIC_KEYS}
    assert {aid.aid[:10] for aid in DEFAULT_AIDS} - rids == {
        "A000000098"
    }  # Visa's US debit uses Visa's keys


def _key(**changes: Any) -> dict[str, Any]:
    key = DEFAULT_CA_PUBLIC_KEYS[0].model_dump(mode="json")
    return key | changes


def test_a_wrong_checksum_is_refused() -> None:
    good = _key()
    wrong = good["checksum"][:-1] + ("0" if good["checksum"][-1] != "0" else "1")
    with pytest.raises(ValidationError) as caught:
        CaPublicKey.model_validate(_key(checksum=wrong))
    assert caught.value.errors()[0]["loc"] == ("checksum",)
    modulus = good["modulus"][:-2] + "FF"
    with pytest.raises(ValidationError):
        CaPublicKey.model_validate(_key(modulus=modulus))  # the checksum no longer matches
    fixed = capk_checksum(
        rid=good["rid"], index=good["index"], modulus=modulus, exponent=good["exponent"]
    )
    assert CaPublicKey.model_validate(_key(modulus=modulus, checksum=fixed)).modulus == modulus


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"terminal_type": "2"}, "terminal_type"),
        ({"terminal_capabilities": "e0f8c8"}, "terminal_capabilities"),
        ({"currency_exponent": 4}, "currency_exponent"),
        ({"country_code": 840}, "country_code"),
        ({"aids": []}, "aids"),
        ({"aids": None}, "aids"),
        ({"aids": [{"aid": "A0000000031010"}]}, "aids.0.label"),
        ({"ca_public_keys": [_key(expires="2030-02-30")]}, "ca_public_keys.0.expires"),
        ({"ca_public_keys": [_key(exponent="05")]}, "ca_public_keys.0.exponent"),
        ({"ca_public_keys": [_key(checksum="00" * 20)]}, "ca_public_keys.0.checksum"),
        ({"ca_public_keys": [_key(), _key()]}, "ca_public_keys"),
    ],
)
def test_invalid_overrides_name_their_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate(EmvOverrides, overrides)
    assert field in {error["field"] for error in caught.value.extra["errors"]}


def test_overrides_keep_only_what_was_given() -> None:
    assert validate(EmvOverrides, {}).stored() == {}
    stored = validate(EmvOverrides, {"terminal_type": "21", "ignored": True}).stored()
    assert stored == {"terminal_type": "21"}


# --- HTTP: the operator's PUT /admin/merchants/{id}/emv -------------------------------------


def test_admin_sets_and_resets_emv_overrides(admin: Admin, make_merchant: MakeMerchant) -> None:
    owner = make_merchant()
    path = f"/admin/merchants/{owner.merchant_id}/emv"
    default = admin.http.get(path).json()
    assert default["terminal_type"] == "22" and default["currency_code"] == "0840"
    visa_only = [aid for aid in default["aids"] if aid["aid"] == "A0000000031010"]
    response = admin.http.put(path, json={"terminal_type": "21", "aids": visa_only})
    assert response.status_code == 200, response.text
    assert response.json() == default | {"terminal_type": "21", "aids": visa_only}
    assert admin.http.get(path).json() == response.json()
    assert owner.http.get("/merchant/config").json()["config_version"] == 2
    assert admin.http.put(path, json={}).json() == default
    assert owner.http.get("/merchant/config").json()["config_version"] == 3


def test_admin_emv_errors(admin: Admin, make_merchant: MakeMerchant) -> None:
    owner = make_merchant()
    path = f"/admin/merchants/{owner.merchant_id}/emv"
    bad = admin.http.put(path, json={"ca_public_keys": [_key(checksum="00" * 20)]})
    assert bad.status_code == 400, bad.text
    assert bad.json()["errors"][0]["field"] == "ca_public_keys.0.checksum"
    assert admin.http.put("/admin/merchants/mer_nope/emv", json={}).status_code == 404
    forbidden = owner.http.put(path, json={})
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"
    assert owner.http.get("/merchant/config").json()["config_version"] == 1


def test_cli_emv_set_and_show(backend: Backend, admin: Admin, tmp_path: Path) -> None:
    merchant = admin.merchant(name="EMV shop", currency="EUR", country="FR")
    shown = backend.cli("merchant", "emv", "show", merchant["merchant_id"])
    assert (shown["country_code"], shown["currency_code"]) == ("0250", "0978")
    file = tmp_path / "emv.json"
    file.write_text('{"additional_terminal_capabilities": "6000F0A001"}')
    updated = backend.cli("merchant", "emv", "set", merchant["merchant_id"], "--file", str(file))
    assert updated == shown | {"additional_terminal_capabilities": "6000F0A001"}
