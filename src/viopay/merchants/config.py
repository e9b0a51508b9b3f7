"""The merchant config (PROTOCOL §3.8 ``merchant`` and ``branding``; §6 ``/merchant/config``).

Four sections, each replaced whole: ``tip``, ``tax``, ``surcharge`` and ``branding``. Every
change bumps ``config_version`` (which the POS config document carries) and records a
``merchant_config.updated`` event; a write that changes nothing changes nothing.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor, record_event
from viopay.db import insert_for
from viopay.errors import NotFound
from viopay.merchants.models import Merchant, MerchantConfig

SECTIONS = ("tip", "tax", "surcharge", "branding")
MAX_AMOUNT = 99_999_999  # the largest charge amount (§4.1), in minor units
MAX_TIP_CHOICES = 10
DEFAULT_PRIMARY_COLOR = "#1A73E8"
DEFAULT_RECEIPT_FOOTER = "Thank you"
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # line feeds are fine on a receipt

BasisPoints = Annotated[int, Field(ge=0, le=10_000, description="Basis points: 10 000 is 100 %.")]
Amount = Annotated[
    int, Field(ge=0, le=MAX_AMOUNT, description="Minor units of the merchant's currency.")
]
Percentage = Annotated[int, Field(ge=0, le=100)]


class _Section(BaseModel):
    # Strict: "15" is not 15 and true is not 1. Unknown members are ignored (§0).
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class TipConfig(_Section):
    enabled: bool
    percentages: list[Percentage] = Field(
        max_length=MAX_TIP_CHOICES,
        description="Suggested tips in whole percent, shown in this order.",
    )
    allow_custom: bool

    @field_validator("percentages")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("value_error", "percentages must not repeat")
        return value


class TaxConfig(_Section):
    enabled: bool
    rate_bps: BasisPoints
    inclusive: bool


class SurchargeConfig(_Section):
    enabled: bool
    rate_bps: BasisPoints
    max_amount: Amount = Field(description="The most surcharge on one charge; 0 means no cap.")


class BrandingConfig(_Section):
    display_name: str = Field(min_length=1, max_length=200)
    primary_color: str = Field(pattern=r"^#[0-9A-Fa-f]{6}$", description="#RRGGBB")
    logo_url: str | None = Field(max_length=2048, description="An https URL, or null.")
    receipt_header: str = Field(max_length=500)
    receipt_footer: str = Field(max_length=500)

    @field_validator("display_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or _CONTROL.search(value) or "\n" in value:
            raise PydanticCustomError("value_error", "must be one line of visible text")
        return value

    @field_validator("primary_color")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @field_validator("logo_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname or any(c.isspace() for c in value):
            raise PydanticCustomError("value_error", "must be an https URL")
        return value

    @field_validator("receipt_header", "receipt_footer")
    @classmethod
    def _printable(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise PydanticCustomError(
                "value_error", "must not hold control characters other than line feeds"
            )
        return value


class MerchantConfigIn(BaseModel):
    """``PUT /merchant/config``: any of the four sections, each a whole object."""

    model_config = ConfigDict(extra="ignore")

    tip: TipConfig | None = None
    tax: TaxConfig | None = None
    surcharge: SurchargeConfig | None = None
    branding: BrandingConfig | None = None

    @field_validator(*SECTIONS, mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise PydanticCustomError(
                "value_error", "must be an object; leave the member out to keep the section"
            )
        return value

    def given(self) -> dict[str, dict[str, Any]]:
        """The sections the request carried, as JSON-ready objects."""
        sections: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            if section is not None:
                sections[name] = section.model_dump(mode="json")
        return sections


class MerchantConfigOut(BaseModel):
    """The merchant config object of §6."""

    config_version: int
    tip: TipConfig
    tax: TaxConfig
    surcharge: SurchargeConfig
    branding: BrandingConfig

    @classmethod
    def of(cls, config: MerchantConfig) -> MerchantConfigOut:
        return cls.model_validate(config_view(config))


def default_sections(merchant: Merchant) -> dict[str, dict[str, Any]]:
    """A new merchant's config (§6)."""
    return {
        "tip": {"enabled": True, "percentages": [15, 18, 20], "allow_custom": True},
        "tax": {"enabled": False, "rate_bps": 0, "inclusive": False},
        "surcharge": {"enabled": False, "rate_bps": 0, "max_amount": 0},
        "branding": {
            "display_name": display_name(merchant.name),
            "primary_color": DEFAULT_PRIMARY_COLOR,
            "logo_url": None,
            "receipt_header": "",
            "receipt_footer": DEFAULT_RECEIPT_FOOTER,
        },
    }


def display_name(name: str) -> str:
    """A merchant name as one line of visible text (merchant names are free-form)."""
    return " ".join(_CONTROL.sub(" ", name).split())[:200] or "Merchant"


def config_view(config: MerchantConfig) -> dict[str, Any]:
    """``{"config_version","tip","tax","surcharge","branding"}``, JSON-ready."""
    return {
        "config_version": config.config_version,
        "tip": config.tip,
        "tax": config.tax,
        "surcharge": config.surcharge,
        "branding": config.branding,
    }


def new_config(merchant: Merchant, *, now: datetime) -> MerchantConfig:
    return MerchantConfig(
        merchant_id=merchant.merchant_id,
        config_version=1,
        emv_overrides={},
        updated_at=now,
        **default_sections(merchant),
    )


async def get_config(
    db: AsyncSession, *, merchant: Merchant, now: datetime, for_update: bool = False
) -> MerchantConfig:
    """The merchant's config, made with the defaults (version 1) if it has none yet."""
    config = await _load(db, merchant.merchant_id, for_update=for_update)
    if config is not None:
        return config
    # INSERT .. ON CONFLICT DO NOTHING: a concurrent request may make it first, and theirs is
    # as good as ours (both are the defaults).
    row = default_sections(merchant) | {
        "merchant_id": merchant.merchant_id,
        "config_version": 1,
        "emv_overrides": {},
        "updated_at": now,
    }
    insert = insert_for(db.get_bind().dialect.name)
    await db.execute(insert(MerchantConfig).values(**row).on_conflict_do_nothing())
    config = await _load(db, merchant.merchant_id, for_update=for_update)
    assert config is not None
    return config


async def merchant_and_config(
    db: AsyncSession, merchant_id: str, *, now: datetime
) -> tuple[Merchant, MerchantConfig]:
    """The merchant (404 if none) and its config (:func:`get_config`), read in one statement
    when the config exists."""
    row = (
        await db.execute(
            select(Merchant, MerchantConfig)
            .outerjoin(MerchantConfig, MerchantConfig.merchant_id == Merchant.merchant_id)
            .where(Merchant.merchant_id == merchant_id)
        )
    ).first()
    if row is None:
        raise NotFound("no such merchant")
    merchant, config = row
    return merchant, config or await get_config(db, merchant=merchant, now=now)


async def _load(db: AsyncSession, merchant_id: str, *, for_update: bool) -> MerchantConfig | None:
    query = select(MerchantConfig).where(MerchantConfig.merchant_id == merchant_id)
    if for_update:
        query = query.with_for_update()
    config: MerchantConfig | None = await db.scalar(query)
    return config


async def update_config(
    db: AsyncSession, *, merchant: Merchant, changes: MerchantConfigIn, actor: Actor, now: datetime
) -> MerchantConfig:
    """Replace the sections ``changes`` carries; bump the version only if one differs."""
    config = await get_config(db, merchant=merchant, now=now, for_update=True)
    changed = {
        name: value for name, value in changes.given().items() if getattr(config, name) != value
    }
    if not changed:
        return config
    for name, value in changed.items():
        setattr(config, name, value)
    _bump(
        db,
        config=config,
        actor=actor,
        now=now,
        data={"sections": sorted(changed), "changes": changed},
    )
    await db.flush()
    return config


async def set_emv_overrides(
    db: AsyncSession, *, merchant: Merchant, overrides: dict[str, Any], actor: Actor, now: datetime
) -> MerchantConfig:
    """Replace the operator's overrides of the emv section (``{}`` restores the defaults)."""
    config = await get_config(db, merchant=merchant, now=now, for_update=True)
    if config.emv_overrides == overrides:
        return config
    config.emv_overrides = overrides
    _bump(
        db,
        config=config,
        actor=actor,
        now=now,
        data={"sections": ["emv"], "overridden": sorted(overrides)},
    )
    await db.flush()
    return config


def _bump(
    db: AsyncSession, *, config: MerchantConfig, actor: Actor, now: datetime, data: dict[str, Any]
) -> None:
    config.config_version += 1
    config.updated_at = now
    record_event(
        db,
        type="merchant_config.updated",
        actor=actor,
        subject_type="merchant_config",
        subject_id=config.merchant_id,
        merchant_id=config.merchant_id,
        now=now,
        data={"config_version": config.config_version, **data},
    )
