"""The built-in default legacy terminal_parameters document (PROTOCOL §3.9, §6).

A terminal with no document of its own and no operator default gets this one: the sandbox
acquirer's hosts, per-AID kernel parameters, a card-range (BIN) routing table, currency and
country tables, receipt templates, display messages in several languages and a hot-card
exception file. It is generated from fixed seeds (SHA-256 in counter mode, not ``random``, so
every Python version makes the same bytes), and is large enough that its gzip stream spans
several 32 KiB chunks, as real parameter files do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any, TypeVar

from viopay.configuration.emv import COUNTRIES, CURRENCIES, DEFAULT_AIDS

T = TypeVar("T")

DOCUMENT_VERSION = "2026.11.1"
BIN_RANGES = 3000
HOT_CARDS = 1200


class _Stream:
    """Deterministic pseudo-random numbers: SHA-256(seed || counter)."""

    def __init__(self, seed: str) -> None:
        self._seed = seed.encode()
        self._counter = 0
        self._pool = b""

    def bytes(self, n: int) -> bytes:
        while len(self._pool) < n:
            self._pool += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        out, self._pool = self._pool[:n], self._pool[n:]
        return out

    def below(self, n: int) -> int:
        return int.from_bytes(self.bytes(4), "big") % n

    def choice(self, items: Sequence[T]) -> T:
        return items[self.below(len(items))]


# (brand, prefixes of §4.1, PAN lengths, weight)
_BRANDS: tuple[tuple[str, tuple[tuple[int, int], ...], tuple[int, ...], int], ...] = (
    ("visa", ((4, 4),), (13, 16, 19), 40),
    ("mastercard", ((51, 55), (2221, 2720)), (16,), 30),
    ("amex", ((34, 34), (37, 37)), (15,), 8),
    ("discover", ((6011, 6011), (644, 649), (65, 65)), (16, 19), 6),
    ("jcb", ((3528, 3589),), (16, 19), 5),
    ("diners", ((300, 305), (36, 36), (38, 39)), (14, 16), 3),
    ("unionpay", ((62, 62),), (16, 17, 18, 19), 8),
)
_PRODUCTS = ("credit", "credit", "debit", "debit", "debit", "prepaid", "commercial")
_TIERS = (
    "classic",
    "gold",
    "platinum",
    "signature",
    "business",
    "corporate",
    "infinite",
    "standard",
)
_ISSUER_WORDS = (
    "First",
    "National",
    "Pacific",
    "Atlantic",
    "Union",
    "Citizens",
    "Metro",
    "Harbor",
    "Summit",
    "Prairie",
    "Capital",
    "Federal",
    "Coastal",
    "Northern",
    "Southern",
    "Valley",
    "Heritage",
    "Liberty",
)
_ISSUER_KINDS = ("Bank", "Savings Bank", "Credit Union", "Trust", "Financial", "Bancorp")


def _bin6(
    stream: _Stream, brand: tuple[str, tuple[tuple[int, int], ...], tuple[int, ...], int]
) -> str:
    low, high = stream.choice(brand[1])
    prefix = str(low + stream.below(high - low + 1))
    return prefix + "".join(str(stream.below(10)) for _ in range(6 - len(prefix)))


BIN_COLUMNS = (
    "low",
    "high",
    "brand",
    "product",
    "tier",
    "issuer",
    "issuer_country",
    "pan_lengths",
    "pin",
    "contactless",
    "routing",
    "updated",
)


def _issuer(stream: _Stream) -> str:
    words = (
        stream.choice(_ISSUER_WORDS),
        stream.choice(_ISSUER_WORDS),
        stream.choice(_ISSUER_KINDS),
    )
    return " ".join(words)


def _bin_table() -> dict[str, Any]:
    """Card ranges, as legacy terminals keep them: one row of :data:`BIN_COLUMNS` per range."""
    stream = _Stream("viopay-terminal-parameters:bin-table:v1")
    weighted = [brand for brand in _BRANDS for _ in range(brand[3])]
    countries = sorted(COUNTRIES.values())
    rows: dict[str, list[Any]] = {}
    while len(rows) < BIN_RANGES:
        brand = stream.choice(weighted)
        bin6 = _bin6(stream, brand)
        if bin6 in rows:
            continue
        product = stream.choice(_PRODUCTS)
        sub = stream.below(10)
        span = stream.choice((1, 1, 1, 2, 5, 10))
        rows[bin6] = [
            f"{bin6}{sub}0",
            f"{bin6}{min(9, sub + span - 1)}9",
            brand[0],
            product,
            stream.choice(_TIERS),
            _issuer(stream),
            stream.choice(countries) if stream.below(4) == 0 else "0840",
            list(brand[2]),
            "online" if product in ("debit", "prepaid") else "optional",
            stream.below(10) != 0,
            stream.choice(("auth-primary", "auth-primary", "auth-primary", "debit-network")),
            f"2026-{1 + stream.below(11):02d}-{1 + stream.below(28):02d}",
        ]
    return {"columns": list(BIN_COLUMNS), "rows": [rows[key] for key in sorted(rows)]}


def _hot_cards() -> dict[str, Any]:
    stream = _Stream("viopay-terminal-parameters:exception-file:v1")
    entries = sorted(stream.bytes(32).hex() for _ in range(HOT_CARDS))
    return {
        "format": "hex SHA-256 of the PAN digits",
        "action": "decline",
        "response_code": "43",
        "entries": entries,
    }


_KERNELS = {
    "A000000003": ("C-3", "Visa payWave"),
    "A000000098": ("C-3", "Visa US Common Debit"),
    "A000000004": ("C-2", "Mastercard contactless"),
    "A000000025": ("C-4", "American Express ExpressPay"),
    "A000000152": ("C-6", "Discover D-PAS"),
    "A000000065": ("C-5", "JCB J/Speedy"),
    "A000000333": ("C-7", "UnionPay QuickPass"),
    "A000000277": ("C-10", "Interac Flash"),
}


def _aid_parameters() -> list[dict[str, Any]]:
    rows = []
    for priority, aid in enumerate(DEFAULT_AIDS, start=1):
        kernel, name = _KERNELS[aid.aid[:10]]
        rows.append(
            {
                "aid": aid.aid,
                "label": aid.label,
                "priority": priority,
                "partial_selection": True,
                "terminal_application_version": aid.application_version,
                "default_tdol": "9F02065F2A029A039C0195059F3704",
                "default_ddol": "9F3704",
                "target_percentage": 0,
                "max_target_percentage": 0,
                "threshold_value": 0,
                "floor_limit": aid.floor_limit,
                "contactless": {
                    "kernel": kernel,
                    "kernel_name": name,
                    "transaction_limit": aid.contactless_limit,
                    "cvm_required_limit": aid.cvm_limit,
                    "floor_limit": 0,
                    "status_check": False,
                    "zero_amount_allowed": False,
                    "ttq": "36004000" if kernel == "C-3" else None,
                },
                "tac": {
                    "default": aid.tac_default,
                    "denial": aid.tac_denial,
                    "online": aid.tac_online,
                },
                "risk_management": {
                    "random_selection": False,
                    "velocity_check": False,
                    "exception_file": True,
                },
            }
        )
    return rows


def _texts() -> dict[str, dict[str, dict[str, str]]]:
    """Display messages and receipt labels per language (a data file beside this module)."""
    texts: dict[str, dict[str, dict[str, str]]] = json.loads(
        resources.files(__package__).joinpath("terminal_texts.json").read_text(encoding="utf-8")
    )
    return texts


def _receipt_templates() -> dict[str, Any]:
    templates: dict[str, Any] = {}
    for language, labels in _texts()["receipt_labels"].items():
        lines = [
            {"align": "center", "style": "bold", "text": "{branding.display_name}"},
            {"align": "center", "text": "{branding.receipt_header}"},
            {"align": "left", "text": f"{labels['merchant']}: {{merchant_id}}"},
            {"align": "left", "text": f"{labels['terminal']}: {{terminal_id}}"},
            {"align": "left", "text": f"{labels['date']}: {{created_at:%Y-%m-%d %H:%M}}"},
            {
                "align": "left",
                "text": f"{labels['card']}: {{card.brand|upper}} **** {{card.last4}}",
            },
            {"align": "left", "text": "AID: {emv.aid}  TVR: {emv.tvr}  TSI: {emv.tsi}"},
            {"align": "left", "text": f"{labels['auth']}: {{authorization_code}}"},
            {
                "align": "justify",
                "text": f"{labels['amount']}|{{amount - tip_amount - tax_amount - surcharge_amount}}",  # noqa: E501
            },
            {
                "align": "justify",
                "text": f"{labels['tip']}|{{tip_amount}}",
                "when": "tip_amount > 0",
            },
            {
                "align": "justify",
                "text": f"{labels['tax']}|{{tax_amount}}",
                "when": "tax_amount > 0",
            },
            {
                "align": "justify",
                "text": f"{labels['surcharge']}|{{surcharge_amount}}",
                "when": "surcharge_amount > 0",
            },
            {
                "align": "justify",
                "style": "bold",
                "text": f"{labels['total']}|{{amount}} {{currency}}",
            },
            {"align": "center", "style": "bold", "text": "{status_message}"},
            {"align": "center", "text": "{branding.receipt_footer}"},
        ]
        templates[language] = {
            "width": 32,
            "customer": {"title": labels["customer_copy"], "lines": lines},
            "merchant": {"title": labels["merchant_copy"], "lines": lines, "signature_line": True},
        }
    return templates


def _hosts() -> list[dict[str, Any]]:
    return [
        {
            "id": "auth-primary",
            "role": "authorization",
            "address": "auth1.sandbox.viopay.example",
            "port": 443,
            "tls": {"min_version": "1.2", "verify": True},
            "connect_timeout_seconds": 10,
            "response_timeout_seconds": 30,
            "retries": 2,
        },
        {
            "id": "auth-secondary",
            "role": "authorization",
            "address": "auth2.sandbox.viopay.example",
            "port": 443,
            "tls": {"min_version": "1.2", "verify": True},
            "connect_timeout_seconds": 10,
            "response_timeout_seconds": 30,
            "retries": 1,
        },
        {
            "id": "debit-network",
            "role": "authorization",
            "address": "debit.sandbox.viopay.example",
            "port": 443,
            "tls": {"min_version": "1.2", "verify": True},
            "connect_timeout_seconds": 10,
            "response_timeout_seconds": 45,
            "retries": 1,
        },
        {
            "id": "settlement",
            "role": "settlement",
            "address": "settle.sandbox.viopay.example",
            "port": 443,
            "tls": {"min_version": "1.2", "verify": True},
            "connect_timeout_seconds": 15,
            "response_timeout_seconds": 120,
            "retries": 3,
        },
        {
            "id": "tms",
            "role": "terminal_management",
            "address": "tms.sandbox.viopay.example",
            "port": 443,
            "tls": {"min_version": "1.2", "verify": True},
            "connect_timeout_seconds": 15,
            "response_timeout_seconds": 60,
            "retries": 3,
        },
    ]


def builtin_document() -> dict[str, Any]:
    """The built-in default document (a new dict on every call; callers may keep it)."""
    messages = _texts()["messages"]
    return {
        "format": "viopay.terminal_parameters",
        "format_version": 1,
        "document_version": DOCUMENT_VERSION,
        "source": "built-in default",
        "acquirer": {
            "name": "Viopay Sandbox Acquiring",
            "acquirer_id": "000000482910",
            "forwarding_institution_id": "00000061738",
            "merchant_category_code": "5999",
            "settlement": {
                "cutoff": "23:30",
                "timezone": "merchant",
                "auto_settle": True,
                "max_batch": 500,
            },
        },
        "hosts": _hosts(),
        "communication": {
            "order": ["ethernet", "wifi", "cellular"],
            "keepalive_seconds": 240,
            "dns_servers": ["1.1.1.1", "8.8.8.8"],
            "cellular": {"apn": "internet", "roaming": False},
            "offline_queue": {"enabled": False, "max_items": 0},
        },
        "transaction_types": [
            {"code": "00", "name": "purchase", "enabled": True, "requires_manager_pin": False},
            {"code": "20", "name": "refund", "enabled": True, "requires_manager_pin": True},
            {"code": "02", "name": "void", "enabled": True, "requires_manager_pin": True},
            {
                "code": "30",
                "name": "balance_inquiry",
                "enabled": False,
                "requires_manager_pin": False,
            },
            {
                "code": "03",
                "name": "pre_authorization",
                "enabled": False,
                "requires_manager_pin": False,
            },
            {
                "code": "09",
                "name": "purchase_with_cashback",
                "enabled": False,
                "requires_manager_pin": False,
            },
        ],
        "entry_modes": {
            "chip": True,
            "contactless": True,
            "swipe": True,
            "manual": True,
            "fallback_to_swipe": True,
        },
        "pin": {
            "format": "ISO 9564 format 4",
            "min_length": 4,
            "max_length": 12,
            "bypass_allowed": False,
        },
        "aid_parameters": _aid_parameters(),
        "currency_table": [
            {"alpha": code, "numeric": currency.numeric, "exponent": currency.exponent}
            for code, currency in sorted(CURRENCIES.items())
        ],
        "country_table": [
            {"alpha2": code, "numeric": numeric} for code, numeric in sorted(COUNTRIES.items())
        ],
        "bin_table": _bin_table(),
        "exception_file": _hot_cards(),
        "receipt_templates": _receipt_templates(),
        "messages": messages,
        "languages": {"default": "en", "available": sorted(messages)},
    }
