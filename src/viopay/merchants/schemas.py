from __future__ import annotations

from zoneinfo import available_timezones

from pydantic import BaseModel, Field, field_validator

from viopay.merchants.models import Merchant, Role


class MerchantIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    country: str = Field(default="US", pattern=r"^[A-Z]{2}$")
    timezone: str = Field(default="UTC", max_length=64)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value not in available_timezones():
            raise ValueError("must be an IANA time zone such as America/Los_Angeles")
        return value


class MerchantOut(BaseModel):
    merchant_id: str
    name: str
    currency: str
    country: str
    timezone: str

    @classmethod
    def of(cls, merchant: Merchant) -> MerchantOut:
        return cls(
            merchant_id=merchant.merchant_id,
            name=merchant.name,
            currency=merchant.currency,
            country=merchant.country,
            timezone=merchant.timezone,
        )


class MemberIn(BaseModel):
    subject: str = Field(min_length=1, max_length=255)
    role: Role


class MemberOut(BaseModel):
    merchant_id: str
    subject: str
    role: Role
