"""Portal forms to and from the merchant API's own models: the config form and charge filters.

The rules stay in the API's models (``MerchantConfigIn``); here HTML form fields become their
JSON shapes, and their validation errors go back next to the fields that caused them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.datastructures import FormData, QueryParams

from viopay.deps import validate
from viopay.errors import InvalidRequest
from viopay.merchants.config import MerchantConfigIn
from viopay.money import AmountInvalid, major, money, to_minor
from viopay.payments.listing import ChargeFilter
from viopay.payments.models import ChargeStatus
from viopay.portal.rendering import zone

# The schema's rules in a merchant's words, by field (its own messages are a developer's).
_PLAIN = {
    "tip.percentages": "Enter up to 3 different whole percentages from 0 to 100, for example 15, 18, 20.",
    "branding.display_name": "Enter the name customers see, up to 200 characters.",
    "branding.primary_color": "Use the form #RRGGBB, for example #1A73E8.",
    "branding.logo_url": "Use a web address starting with https://, or leave it empty.",
    "branding.receipt_header": "Keep the receipt header under 500 characters.",
    "branding.receipt_footer": "Keep the receipt footer under 500 characters.",
}
# Messages that already speak plainly (our own validators') are kept as they are.
_KEEP = ("must not repeat", "https")


@dataclass
class ConfigForm:
    """The four sections as the form shows them (text as typed), and errors by field."""

    values: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)
    changes: MerchantConfigIn | None = None


def percent(bps: int) -> str:
    """Basis points as the percentage a merchant types: 825 → ``8.25``, 800 → ``8``."""
    text = f"{Decimal(bps) / 100:.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def config_values(config: dict[str, Any], *, currency: str) -> dict[str, Any]:
    """A config object (§6) as form values: rates in percent, the cap in money."""
    tip, tax, surcharge, branding = (
        config["tip"],
        config["tax"],
        config["surcharge"],
        config["branding"],
    )
    return {
        "tip.enabled": tip["enabled"],
        "tip.percentages": ", ".join(str(p) for p in tip["percentages"]),
        "tip.allow_custom": tip["allow_custom"],
        "tax.enabled": tax["enabled"],
        "tax.rate": percent(tax["rate_bps"]),
        "tax.inclusive": tax["inclusive"],
        "surcharge.enabled": surcharge["enabled"],
        "surcharge.rate": percent(surcharge["rate_bps"]),
        "surcharge.max_amount": major(surcharge["max_amount"], currency),
        "branding.display_name": branding["display_name"],
        "branding.primary_color": branding["primary_color"],
        "branding.logo_url": branding["logo_url"] or "",
        "branding.receipt_header": branding["receipt_header"],
        "branding.receipt_footer": branding["receipt_footer"],
    }


_CHECKBOXES = (
    "tip.enabled",
    "tip.allow_custom",
    "tax.enabled",
    "tax.inclusive",
    "surcharge.enabled",
)
_RATES = ("tax.rate", "surcharge.rate")
_TEXTS = (
    "branding.display_name",
    "branding.primary_color",
    "branding.logo_url",
    "branding.receipt_header",
    "branding.receipt_footer",
)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    # Browsers send CR LF in textareas; receipts keep plain line feeds.
    return value.replace("\r\n", "\n") if isinstance(value, str) else ""


def _bps(text: str) -> int | None:
    """A percentage as typed (``8.25``, ``8,25 %``) in basis points; None unless 0-100 with
    at most two decimals."""
    cleaned = text.replace("%", "").replace(" ", "").replace(",", ".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    # Range first: sNaN or 1e999999999 must not reach the arithmetic (it raises, not a 500).
    if not value.is_finite() or not 0 <= value <= 100:
        return None
    scaled = value * 100
    if scaled != scaled.to_integral_value():
        return None
    return int(scaled)


def parse_config_form(form: FormData, *, currency: str) -> ConfigForm:
    values: dict[str, Any] = {name: form.get(name) == "on" for name in _CHECKBOXES}
    names = (*_RATES, "surcharge.max_amount", "tip.percentages")
    values |= {name: _text(form, name).strip() for name in names}
    values |= {name: _text(form, name) for name in _TEXTS}
    result = ConfigForm(values)
    document: dict[str, dict[str, Any]] = {"tip": {}, "tax": {}, "surcharge": {}, "branding": {}}
    for name in _CHECKBOXES:
        section, member = name.split(".")
        document[section][member] = values[name]
    for name in _RATES:
        bps = _bps(values[name] or "0")
        if bps is None:
            result.errors[name] = "Enter a percentage from 0 to 100, for example 8.25."
        document[name.split(".")[0]]["rate_bps"] = bps
    try:
        document["surcharge"]["max_amount"] = to_minor(
            values["surcharge.max_amount"] or "0", currency
        )
    except AmountInvalid as exc:
        result.errors["surcharge.max_amount"] = str(exc)
        document["surcharge"]["max_amount"] = None
    percentages = [_integer(p.strip()) for p in values["tip.percentages"].split(",") if p.strip()]
    if any(p is None for p in percentages):
        result.errors["tip.percentages"] = (
            "Enter whole percentages separated by commas, for example 15, 18, 20."
        )
    document["tip"]["percentages"] = percentages
    for name in _TEXTS:
        section, member = name.split(".")
        document[section][member] = values[name]
    logo = values["branding.logo_url"].strip()
    document["branding"]["logo_url"] = logo or None
    try:
        result.changes = validate(MerchantConfigIn, document)
    except InvalidRequest as exc:
        for error in exc.extra.get("errors", []):
            result.errors.setdefault(*_plain_error(error["field"], error["message"]))
    if result.errors:
        result.changes = None
    return result


def _plain_error(path: str, message: str) -> tuple[str, str]:
    """The form field of a schema error, and what it means in plain words."""
    section, _, rest = path.partition(".")
    member = rest.split(".")[0]
    name = {"rate_bps": f"{section}.rate"}.get(member, f"{section}.{member}")
    if name == "surcharge.max_amount":
        return name, "That amount is too large for one payment."
    if any(kept in message for kept in _KEEP):
        return name, message
    return name, _PLAIN.get(name, "Check this value.")


_INTEGER = re.compile(r"-?[0-9]{1,9}")  # ASCII digits: str.isdigit also takes "²", int() not


def _integer(text: str) -> int | None:
    text = text.replace(" ", "").replace("_", "")
    return int(text) if _INTEGER.fullmatch(text) else None


# --- charge filters ---------------------------------------------------------------------------


@dataclass
class ChargeFilters:
    """The filters as typed (and put back in links); ``q`` searches."""

    status: str = ""
    terminal: str = ""
    start: str = ""
    end: str = ""
    q: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.status or self.terminal or self.start or self.end or self.q)

    def query(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("q", self.q),
                ("status", self.status),
                ("terminal", self.terminal),
                ("from", self.start),
                ("to", self.end),
            )
            if v
        }


# Days a filter may name: any zone's midnight of them, and of the day after, is a UTC instant
# (0001-01-01 in Tokyo is before year 1 in UTC; the day after 9999-12-31 does not exist).
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9998, 12, 31)
_DAY_ERROR = f"Enter a date as YYYY-MM-DD, from {FIRST_DAY} to {LAST_DAY}."


def _day(text: str) -> date | None:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return day if FIRST_DAY <= day <= LAST_DAY else None


def charge_filters(
    params: QueryParams, *, merchant_id: str, timezone: str
) -> tuple[ChargeFilters, ChargeFilter]:
    """The filters as typed, and the charge service's filter.

    Dates are days of the merchant's time zone; the end day is included (the service's
    ``created_to`` is exclusive, so it gets the next midnight).
    """
    filters = ChargeFilters(
        status=params.get("status", ""),
        terminal=params.get("terminal", "").strip(),
        start=params.get("from", "").strip(),
        end=params.get("to", "").strip(),
        q=params.get("q", "").strip()[:128],
    )
    status: ChargeStatus | None = None
    if filters.status:
        try:
            status = ChargeStatus(filters.status)
        except ValueError:
            filters.errors["status"] = "Pick a status from the list."
    tz = zone(timezone)
    start, end = _day(filters.start), _day(filters.end)
    if filters.start and start is None:
        filters.errors["from"] = _DAY_ERROR
    if filters.end and end is None:
        filters.errors["to"] = _DAY_ERROR
    if start and end and start > end:
        filters.errors["to"] = "The end date must be on or after the start date."
    spec = ChargeFilter(
        merchant_id=merchant_id,
        status=status,
        terminal_id=filters.terminal[:128] or None,
        created_from=datetime.combine(start, time(), tzinfo=tz) if start else None,
        created_to=datetime.combine(end + timedelta(days=1), time(), tzinfo=tz) if end else None,
        q=filters.q or None,
    )
    return filters, spec


@dataclass
class RefundForm:
    """The refund form as typed: the amount in major units, the reason."""

    amount: str = ""
    reason: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    minor: int | None = None


def parse_refund_form(form: FormData, *, currency: str, left: int) -> RefundForm:
    """Plain-language errors next to the fields; an empty amount refunds all that is left."""
    result = RefundForm(amount=_text(form, "amount").strip(), reason=_text(form, "reason").strip())
    if not result.amount:
        result.minor = left
    else:
        try:
            result.minor = to_minor(result.amount, currency)
        except AmountInvalid as exc:
            result.errors["amount"] = str(exc)
    if result.minor is not None and not result.errors:
        if result.minor < 1:
            result.errors["amount"] = "Enter an amount greater than zero."
        elif result.minor > left:
            result.errors["amount"] = (
                f"You can refund at most {money(left, currency)}: that is what is left of this charge."
            )
    if len(result.reason) > 255:
        result.errors["reason"] = "Keep the reason under 255 characters."
    if result.errors:
        result.minor = None
    return result
