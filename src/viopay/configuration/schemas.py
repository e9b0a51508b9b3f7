"""The config document of ``POST /pos/config`` (PROTOCOL §3.8) and its published JSON Schema.

The builder validates every document against these models before it is sealed, so what a
terminal receives always matches what ``GET /pos/config/schema`` promises.
"""

from __future__ import annotations

import hashlib
from datetime import date
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from viopay.merchants.config import BrandingConfig, SurchargeConfig, TaxConfig, TipConfig

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_AMOUNT = 99_999_999

Hex = Annotated[str, Field(pattern=r"^(?:[0-9A-F]{2})+$")]
Limit = Annotated[
    int, Field(ge=0, le=MAX_AMOUNT, description="Minor units of the terminal's currency.")
]
Tvr = Annotated[str, Field(pattern=r"^[0-9A-F]{10}$", description="5 bytes, hex (TVR bit map)")]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class AidEntry(_Strict):
    """One application the terminal supports, with its terminal action codes."""

    aid: str = Field(
        pattern=r"^(?:[0-9A-F]{2}){5,16}$", description="Application identifier (9F06), hex"
    )
    label: str = Field(min_length=1, max_length=16, pattern=r"^[\x20-\x7E]+$")
    application_version: str = Field(
        pattern=r"^[0-9A-F]{4}$", description="Terminal application version (9F09)"
    )
    floor_limit: Limit
    contactless_limit: Limit
    cvm_limit: Limit
    tac_default: Tvr
    tac_denial: Tvr
    tac_online: Tvr


def capk_checksum(*, rid: str, index: str, modulus: str, exponent: str) -> str:
    """EMV Book 2 §5.2 / Annex B: SHA-1 over RID || index || modulus || exponent, upper-case hex."""
    return (
        hashlib.sha1(bytes.fromhex(rid + index + modulus + exponent), usedforsecurity=False)
        .hexdigest()
        .upper()
    )


class CaPublicKey(_Strict):
    """A certification authority public key, for offline data authentication."""

    rid: str = Field(pattern=r"^[0-9A-F]{10}$")
    index: str = Field(pattern=r"^[0-9A-F]{2}$")
    # EMV allows 512 to 1984 bits (Book 2 Annex B2): 64 to 248 bytes.
    modulus: str = Field(pattern=r"^(?:[0-9A-F]{2}){64,248}$")
    exponent: str = Field(pattern=r"^(?:03|010001)$")
    checksum: str = Field(
        pattern=r"^[0-9A-F]{40}$", description="SHA-1 of RID||index||modulus||exponent"
    )
    expires: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="YYYY-MM-DD")

    @field_validator("modulus")
    @classmethod
    def _leading_byte(cls, value: str) -> str:
        if value.startswith("00"):
            raise PydanticCustomError("value_error", "the modulus must not start with a zero byte")
        return value

    @field_validator("checksum")
    @classmethod
    def _checksum(cls, value: str, info: ValidationInfo) -> str:
        parts = info.data
        if {"rid", "index", "modulus", "exponent"} <= parts.keys():
            expected = capk_checksum(
                rid=parts["rid"],
                index=parts["index"],
                modulus=parts["modulus"],
                exponent=parts["exponent"],
            )
            if value != expected:
                raise PydanticCustomError(
                    "value_error", "does not match the SHA-1 of rid || index || modulus || exponent"
                )
        return value

    @field_validator("expires")
    @classmethod
    def _date(cls, value: str) -> str:
        try:
            date.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError("value_error", "must be a calendar date YYYY-MM-DD") from None
        return value


def _unique(items: list[Any], key: Any, what: str) -> None:
    seen: set[Any] = set()
    for item in items:
        if key(item) in seen:
            raise PydanticCustomError("value_error", f"{what} {key(item)} appears twice")
        seen.add(key(item))


class EmvSection(_Strict):
    terminal_type: str = Field(
        pattern=r"^[0-9]{2}$", description="9F35, e.g. 22: attended, merchant, online only"
    )
    terminal_capabilities: str = Field(pattern=r"^[0-9A-F]{6}$", description="9F33, 3 bytes")
    additional_terminal_capabilities: str = Field(
        pattern=r"^[0-9A-F]{10}$", description="9F40, 5 bytes"
    )
    country_code: str = Field(
        pattern=r"^[0-9]{4}$", description="9F1A: ISO 3166-1 numeric, 4 digits"
    )
    currency_code: str = Field(
        pattern=r"^[0-9]{4}$", description="5F2A: ISO 4217 numeric, 4 digits"
    )
    currency_exponent: int = Field(ge=0, le=3, description="5F36")
    aids: list[AidEntry] = Field(min_length=1, max_length=64)
    ca_public_keys: list[CaPublicKey] = Field(max_length=128)

    @field_validator("aids")
    @classmethod
    def _distinct_aids(cls, value: list[AidEntry]) -> list[AidEntry]:
        _unique(value, lambda a: a.aid, "aid")
        return value

    @field_validator("ca_public_keys")
    @classmethod
    def _distinct_keys(cls, value: list[CaPublicKey]) -> list[CaPublicKey]:
        _unique(value, lambda k: f"{k.rid}/{k.index}", "key")
        return value


class EmvOverrides(BaseModel):
    """An operator's overrides of a merchant's emv section (``PUT /admin/merchants/{id}/emv``).

    Each member given replaces the default whole (``aids`` and ``ca_public_keys`` are lists);
    members left out keep the defaults, so ``{}`` restores them all.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    terminal_type: str | None = Field(default=None, pattern=r"^[0-9]{2}$")
    terminal_capabilities: str | None = Field(default=None, pattern=r"^[0-9A-F]{6}$")
    additional_terminal_capabilities: str | None = Field(default=None, pattern=r"^[0-9A-F]{10}$")
    country_code: str | None = Field(default=None, pattern=r"^[0-9]{4}$")
    currency_code: str | None = Field(default=None, pattern=r"^[0-9]{4}$")
    currency_exponent: int | None = Field(default=None, ge=0, le=3)
    aids: list[AidEntry] | None = Field(default=None, min_length=1, max_length=64)
    ca_public_keys: list[CaPublicKey] | None = Field(default=None, max_length=128)

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise PydanticCustomError(
                "value_error", "must not be null; leave the member out to keep the default"
            )
        return value

    @field_validator("aids")
    @classmethod
    def _distinct_aids(cls, value: list[AidEntry]) -> list[AidEntry]:
        _unique(value, lambda a: a.aid, "aid")
        return value

    @field_validator("ca_public_keys")
    @classmethod
    def _distinct_keys(cls, value: list[CaPublicKey]) -> list[CaPublicKey]:
        _unique(value, lambda k: f"{k.rid}/{k.index}", "key")
        return value

    def stored(self) -> dict[str, Any]:
        """What is kept: only the members the operator gave."""
        return self.model_dump(mode="json", exclude_unset=True)


class TerminalSection(_Strict):
    terminal_id: str
    device_id: str
    label: str | None
    merchant_id: str
    merchant_name: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    country: str = Field(pattern=r"^[A-Z]{2}$")
    timezone: str


class OfflinePolicy(_Strict):
    allowed: bool
    max_amount: Limit
    max_count: int = Field(ge=0, le=10_000)


class SecuritySection(_Strict):
    hmac_key_id: str = Field(
        min_length=1, max_length=128, description="The MAC key's key_id: X-Key-Id"
    )
    clock_skew_seconds: int = Field(ge=0, le=3600)
    pin_timeout_seconds: int = Field(ge=1, le=300)
    offline: OfflinePolicy


class MerchantSection(_Strict):
    tip: TipConfig
    tax: TaxConfig
    surcharge: SurchargeConfig


class ConfigDocument(_Strict):
    """The core config of a terminal (§3.8): every member is always present."""

    config_version: int = Field(
        ge=1, description="Grows with every change to the merchant's config."
    )
    terminal: TerminalSection
    emv: EmvSection
    security: SecuritySection
    branding: BrandingConfig
    merchant: MerchantSection


def config_document_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that ``GET /pos/config/schema`` publishes."""
    schema = ConfigDocument.model_json_schema()
    return {"$schema": SCHEMA_DIALECT, "$id": "urn:viopay:schema:pos-config:v1", **schema}
