"""EMV defaults of the config document (PROTOCOL §3.8 ``emv``) and the operator's overrides.

The terminal is an attended, online-only merchant terminal (9F35 ``22``) reading chip,
contactless and stripe, with online PIN, signature and no-CVM (9F33 ``E0F8C8``); offline
approval is off, so every floor limit is 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from viopay.configuration.emv_capks import PUBLISHED_CAPKS, TEST_KEY_EXPIRY
from viopay.configuration.schemas import AidEntry, CaPublicKey, EmvSection
from viopay.errors import InvalidState
from viopay.merchants.models import Merchant

TERMINAL_TYPE = "22"
TERMINAL_CAPABILITIES = "E0F8C8"
ADDITIONAL_TERMINAL_CAPABILITIES = "F000F0A001"


class Currency(NamedTuple):
    numeric: str  # ISO 4217 numeric, 4 digits as EMV 5F2A carries it
    exponent: int  # ISO 4217 minor unit (5F36)


# ISO 4217 code:numeric:minor unit, for the currencies merchants on the platform use; for any
# other an operator sets currency_code and currency_exponent (``viopay merchant emv set``).
_ISO_4217 = (
    "AED:784:2 ARS:032:2 AUD:036:2 BDT:050:2 BGN:975:2 BHD:048:3 BRL:986:2 CAD:124:2 CHF:756:2 "
    "CLP:152:0 CNY:156:2 COP:170:2 CZK:203:2 DKK:208:2 EGP:818:2 EUR:978:2 GBP:826:2 HKD:344:2 "
    "HUF:348:2 IDR:360:2 ILS:376:2 INR:356:2 ISK:352:0 JOD:400:3 JPY:392:0 KES:404:2 KRW:410:0 "
    "KWD:414:3 LKR:144:2 MAD:504:2 MXN:484:2 MYR:458:2 NGN:566:2 NOK:578:2 NZD:554:2 OMR:512:3 "
    "PEN:604:2 PHP:608:2 PKR:586:2 PLN:985:2 QAR:634:2 RON:946:2 SAR:682:2 SEK:752:2 SGD:702:2 "
    "THB:764:2 TND:788:3 TRY:949:2 TWD:901:2 UAH:980:2 USD:840:2 VND:704:0 ZAR:710:2 "
)
# ISO 3166-1 alpha-2:numeric.
_ISO_3166 = (
    "AE:784 AR:032 AT:040 AU:036 BD:050 BE:056 BG:100 BH:048 BR:076 CA:124 CH:756 CL:152 "
    "CN:156 CO:170 CY:196 CZ:203 DE:276 DK:208 EE:233 EG:818 ES:724 FI:246 FR:250 GB:826 "
    "GR:300 HK:344 HR:191 HU:348 ID:360 IE:372 IL:376 IN:356 IS:352 IT:380 JO:400 JP:392 "
    "KE:404 KR:410 KW:414 LK:144 LT:440 LU:442 LV:428 MA:504 MT:470 MX:484 MY:458 NG:566 "
    "NL:528 NO:578 NZ:554 OM:512 PE:604 PH:608 PK:586 PL:616 PT:620 QA:634 RO:642 SA:682 "
    "SE:752 SG:702 SI:705 SK:703 TH:764 TN:788 TR:792 TW:158 UA:804 US:840 VN:704 ZA:710 "
)
CURRENCIES: dict[str, Currency] = {
    code: Currency(f"0{numeric}", int(exponent))
    for code, numeric, exponent in (entry.split(":") for entry in _ISO_4217.split())
}
# EMV carries both numeric codes as 4 digits (9F1A, 5F2A).
COUNTRIES: dict[str, str] = {
    alpha2: f"0{numeric}" for alpha2, numeric in (entry.split(":") for entry in _ISO_3166.split())
}


def _aid(
    aid: str, label: str, version: str, *, contactless: int, cvm: int, tacs: tuple[str, str, str]
) -> AidEntry:
    default, denial, online = tacs
    return AidEntry(
        aid=aid,
        label=label,
        application_version=version,
        floor_limit=0,
        contactless_limit=contactless,
        cvm_limit=cvm,
        tac_default=default,
        tac_denial=denial,
        tac_online=online,
    )


# (default, denial, online) terminal action codes as the schemes' terminal guides give them
# for an online-only attended terminal.
_VISA_TACS = ("DC4000A800", "0010000000", "DC4004F800")
_MASTERCARD_TACS = ("FE50BCA000", "0000000000", "FE50BCF800")
_MAESTRO_TACS = ("FE50BCA000", "0000800000", "FE50BCF800")
_AMEX_TACS = ("DC50FC9800", "0010000000", "DE00FC9800")
_DISCOVER_TACS = ("DC00002000", "0010000000", "FCE09CF800")
_JCB_TACS = ("FC6024A800", "0010000000", "FC60ACF800")
_UNIONPAY_TACS = ("D84000A800", "0010000000", "D84004F800")
_INTERAC_TACS = ("D84000A800", "0010000000", "D84004F800")

DEFAULT_AIDS: tuple[AidEntry, ...] = (
    _aid("A0000000031010", "VISA CREDIT", "0096", contactless=20000, cvm=10000, tacs=_VISA_TACS),
    _aid("A0000000032010", "VISA DEBIT", "0096", contactless=20000, cvm=10000, tacs=_VISA_TACS),
    _aid("A0000000980840", "US DEBIT", "0096", contactless=20000, cvm=10000, tacs=_VISA_TACS),
    _aid(
        "A0000000041010", "MASTERCARD", "0002", contactless=20000, cvm=10000, tacs=_MASTERCARD_TACS
    ),
    _aid("A0000000043060", "MAESTRO", "0002", contactless=20000, cvm=10000, tacs=_MAESTRO_TACS),
    _aid("A00000002501", "AMERICAN EXPRESS", "0001", contactless=20000, cvm=10000, tacs=_AMEX_TACS),
    _aid("A0000001523010", "DISCOVER", "0001", contactless=20000, cvm=10000, tacs=_DISCOVER_TACS),
    _aid("A0000000651010", "JCB", "0200", contactless=20000, cvm=10000, tacs=_JCB_TACS),
    _aid(
        "A000000333010101",
        "UNIONPAY DEBIT",
        "0030",
        contactless=20000,
        cvm=10000,
        tacs=_UNIONPAY_TACS,
    ),
    _aid(
        "A000000333010102",
        "UNIONPAY CREDIT",
        "0030",
        contactless=20000,
        cvm=10000,
        tacs=_UNIONPAY_TACS,
    ),
    _aid("A0000002771010", "INTERAC", "0001", contactless=25000, cvm=25000, tacs=_INTERAC_TACS),
)

DEFAULT_CA_PUBLIC_KEYS: tuple[CaPublicKey, ...] = tuple(
    CaPublicKey(
        rid=key.rid,
        index=key.index,
        modulus=key.modulus,
        exponent=key.exponent,
        checksum=key.checksum,
        expires=TEST_KEY_EXPIRY,
    )
    for key in PUBLISHED_CAPKS
)


def default_emv(merchant: Merchant) -> dict[str, Any]:
    """The emv section a merchant gets with no overrides (codes from its country and currency).

    A country or currency missing from the tables leaves its member out; an override must
    then supply it (:func:`effective_emv` says so).
    """
    section: dict[str, Any] = {
        "terminal_type": TERMINAL_TYPE,
        "terminal_capabilities": TERMINAL_CAPABILITIES,
        "additional_terminal_capabilities": ADDITIONAL_TERMINAL_CAPABILITIES,
        "aids": [aid.model_dump(mode="json") for aid in DEFAULT_AIDS],
        "ca_public_keys": [key.model_dump(mode="json") for key in DEFAULT_CA_PUBLIC_KEYS],
    }
    if merchant.country in COUNTRIES:
        section["country_code"] = COUNTRIES[merchant.country]
    if merchant.currency in CURRENCIES:
        currency = CURRENCIES[merchant.currency]
        section["currency_code"] = currency.numeric
        section["currency_exponent"] = currency.exponent
    return section


def effective_emv(merchant: Merchant, overrides: Mapping[str, Any]) -> EmvSection:
    """The defaults with the operator's overrides on top, validated."""
    section = default_emv(merchant) | dict(overrides)
    missing = [
        m for m in ("country_code", "currency_code", "currency_exponent") if m not in section
    ]
    if missing:
        raise InvalidState(
            f"no EMV code is known for country {merchant.country} / currency {merchant.currency}; "
            f"an operator must set {', '.join(missing)} (viopay merchant emv set)"
        )
    return EmvSection.model_validate(section)
