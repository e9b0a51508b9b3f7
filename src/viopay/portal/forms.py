"""Portal forms to and from the merchant API's own models: the config form and charge filters.

The rules stay in the API's models (``MerchantConfigIn``); here HTML form fields become their
JSON shapes, and their validation errors go back next to the fields that caused them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from starlette.datastructures import FormData, QueryParams

from viopay.deps import validate
from viopay.errors import InvalidRequest
from viopay.ids import rfc3339
from viopay.merchants.config import MerchantConfigIn
from viopay.payments.models import ChargeStatus
from viopay.portal.rendering import zone

# Messages of the schema that name a regular expression read better as an example.
_PLAIN = {"branding.primary_color": "Use the form #RRGGBB, for example #1A73E8."}


@dataclass
class ConfigForm:
    """The four sections as the form shows them (text as typed), and errors by field."""

    values: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)
    changes: MerchantConfigIn | None = None


def config_values(config: dict[str, Any]) -> dict[str, Any]:
    """A config object (§6) as form values."""
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
        "tax.rate_bps": str(tax["rate_bps"]),
        "tax.inclusive": tax["inclusive"],
        "surcharge.enabled": surcharge["enabled"],
        "surcharge.rate_bps": str(surcharge["rate_bps"]),
        "surcharge.max_amount": str(surcharge["max_amount"]),
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
_INTEGERS = ("tax.rate_bps", "surcharge.rate_bps", "surcharge.max_amount")
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


def parse_config_form(form: FormData) -> ConfigForm:
    values: dict[str, Any] = {name: form.get(name) == "on" for name in _CHECKBOXES}
    values |= {name: _text(form, name).strip() for name in (*_INTEGERS, "tip.percentages")}
    values |= {name: _text(form, name) for name in _TEXTS}
    result = ConfigForm(values)
    document: dict[str, dict[str, Any]] = {"tip": {}, "tax": {}, "surcharge": {}, "branding": {}}
    for name in _CHECKBOXES:
        section, member = name.split(".")
        document[section][member] = values[name]
    for name in _INTEGERS:
        section, member = name.split(".")
        number = _integer(values[name])
        if number is None:
            result.errors[name] = "Enter a whole number, for example 825."
        document[section][member] = number
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
            name = ".".join(error["field"].split(".")[:2])
            result.errors.setdefault(name, _PLAIN.get(name, error["message"]))
    if result.errors:
        result.changes = None
    return result


def _integer(text: str) -> int | None:
    text = text.replace(" ", "").replace("_", "")
    if not text or not text.lstrip("-").isdigit():
        return None
    return int(text)


# --- charge filters ---------------------------------------------------------------------------


@dataclass
class ChargeFilters:
    status: str = ""
    terminal: str = ""
    start: str = ""
    end: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.status or self.terminal or self.start or self.end)

    def query(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("status", self.status),
                ("terminal", self.terminal),
                ("from", self.start),
                ("to", self.end),
            )
            if v
        }


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def charge_filters(params: QueryParams, *, timezone: str) -> tuple[ChargeFilters, dict[str, Any]]:
    """The filters as typed, and the arguments of the merchant API's charge list.

    Dates are days of the merchant's time zone; the end day is included (the API's
    ``created_to`` is exclusive, so it gets the next midnight).
    """
    filters = ChargeFilters(
        status=params.get("status", ""),
        terminal=params.get("terminal", "").strip(),
        start=params.get("from", "").strip(),
        end=params.get("to", "").strip(),
    )
    arguments: dict[str, Any] = {
        "status": None,
        "terminal_id": filters.terminal or None,
        "created_from": None,
        "created_to": None,
    }
    if filters.status:
        try:
            arguments["status"] = ChargeStatus(filters.status)
        except ValueError:
            filters.errors["status"] = "Pick a status from the list."
    tz = zone(timezone)
    start, end = _day(filters.start), _day(filters.end)
    if filters.start and start is None:
        filters.errors["from"] = "Enter a date as YYYY-MM-DD."
    if filters.end and end is None:
        filters.errors["to"] = "Enter a date as YYYY-MM-DD."
    if start and end and start > end:
        filters.errors["to"] = "The end date must be on or after the start date."
    if start:
        arguments["created_from"] = rfc3339(datetime.combine(start, time(), tzinfo=tz))
    if end:
        arguments["created_to"] = rfc3339(
            datetime.combine(end + timedelta(days=1), time(), tzinfo=tz)
        )
    return filters, arguments
