"""POS activation headers (PROTOCOL §2.1) and the device they authenticate."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import semver
from fastapi import Depends, Request
from sqlalchemy import and_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.cache import Cache
from viopay.crypto.wrapping import KeyWrapper
from viopay.deps import runtime_of
from viopay.devices.models import Device, MerchantDeviceIdentityKey
from viopay.devices.service import unwrap_identity_secret
from viopay.errors import (
    AppVersionUnsupported,
    DeviceDisabled,
    DeviceNotFound,
    InvalidHeader,
    InvalidSignature,
    KeyRevoked,
    UnknownKey,
)
from viopay.runtime import Runtime
from viopay.signatures import (
    SignedHeaders,
    check_timestamp,
    header,
    parse_signed_headers,
    spend_nonce,
)
from viopay_device.protocol.errors import SignatureMismatch
from viopay_device.protocol.signing import attest_string_to_sign, verify_signature

DEVICE_ID_RE = re.compile(r"^POS-[0-9A-F]{8}$")
# semver.org's official pattern for SemVer 2.0.
_SEMVER = (
    r"(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)"
    r"(?:-(?:(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+(?:[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
USER_AGENT_RE = re.compile(
    rf"^Viopay-POS/(?P<version>{_SEMVER}) \((?P<os>[^;()]+); (?P<model>[^;()]+)\)$"
)
MAX_VERSION_LENGTH = 64
FREE_FORM_RE = re.compile(r"^[\x21-\x7E]{1,128}$")
LAST_SEEN_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class PosHeaders:
    device_id: str
    version: str


def parse_device_id(request: Request) -> str:
    device_id = header(request, "X-Device-Id")
    if not DEVICE_ID_RE.match(device_id):
        raise InvalidHeader("X-Device-Id", "must be POS- followed by 8 upper-case hex digits")
    return device_id


def parse_user_agent(request: Request) -> str:
    """The app version of ``User-Agent`` (§2.1), at most 64 characters (§1)."""
    match = USER_AGENT_RE.match(header(request, "User-Agent"))
    if match is None:
        raise InvalidHeader("User-Agent", "must be Viopay-POS/{semver} ({os}; {model})")
    version = match["version"]
    if len(version) > MAX_VERSION_LENGTH:
        raise InvalidHeader("User-Agent", f"the version is over {MAX_VERSION_LENGTH} characters")
    return version


def parse_pos_headers(request: Request) -> PosHeaders:
    device_id = parse_device_id(request)
    version = parse_user_agent(request)
    if header(request, "X-Client-Type") != "pos":
        raise InvalidHeader("X-Client-Type", "must be pos")
    return PosHeaders(device_id=device_id, version=version)


def version_below(version: str, minimum: str) -> bool:
    return _version(version) < _version(minimum)


@functools.lru_cache(maxsize=1024)
def _version(text: str) -> semver.Version:
    """Parsed once per distinct version string (a fleet runs a handful of versions)."""
    return semver.Version.parse(text)


async def load_device(db: AsyncSession, device_id: str) -> Device:
    device = await db.get(Device, device_id)
    if device is None:
        raise DeviceNotFound()
    if device.disabled:
        raise DeviceDisabled()
    return device


# Built once (issue 10): building a statement costs more CPU than running it on these routes.
_KEY = MerchantDeviceIdentityKey
_DEVICE_WITH_KEY = (
    select(Device, _KEY)
    .outerjoin(_KEY, and_(_KEY.device_id == Device.device_id, _KEY.key_id == bindparam("key_id")))
    .where(Device.device_id == bindparam("device_id"))
)
_IDENTITY_KEY = select(_KEY).where(
    _KEY.device_id == bindparam("device_id"), _KEY.key_id == bindparam("key_id")
)


async def load_device_with_key(
    db: AsyncSession, device_id: str, key_id: str | None
) -> tuple[Device, MerchantDeviceIdentityKey | None]:
    """:func:`load_device`, and the device's identity key ``key_id`` (None when it has none of
    that id) read in the same statement."""
    if key_id is None:
        return await load_device(db, device_id), None
    row = (await db.execute(_DEVICE_WITH_KEY, {"device_id": device_id, "key_id": key_id})).first()
    if row is None:
        raise DeviceNotFound()
    device, found = row
    if device.disabled:
        raise DeviceDisabled()
    return device, found


def seen_changes(
    *, last_seen_at: datetime | None, app_version: str | None, version: str | None, now: datetime
) -> dict[str, object]:
    """What an authenticated request changes on its device: ``app_version`` when it differs,
    ``last_seen_at`` at most once a minute (a terminal polling every few seconds writes rarely)."""
    changes: dict[str, object] = {}
    if version is not None and app_version != version:
        changes["app_version"] = version
    if last_seen_at is None or now - last_seen_at >= LAST_SEEN_RESOLUTION:
        changes["last_seen_at"] = now
    return changes


def touch(device: Device, *, version: str | None, now: datetime) -> None:
    """Record the last authenticated request on a loaded device (see :func:`seen_changes`)."""
    changes = seen_changes(
        last_seen_at=device.last_seen_at, app_version=device.app_version, version=version, now=now
    )
    for name, value in changes.items():
        setattr(device, name, value)


async def identity_key_of(
    db: AsyncSession, *, device_id: str, key_id: str
) -> MerchantDeviceIdentityKey | None:
    key: MerchantDeviceIdentityKey | None = await db.scalar(
        _IDENTITY_KEY, {"device_id": device_id, "key_id": key_id}
    )
    return key


async def check_device_signature(
    cache: Cache,
    *,
    wrapper: KeyWrapper,
    device: Device,
    key: MerchantDeviceIdentityKey | None,
    signed: SignedHeaders,
    now: datetime,
) -> MerchantDeviceIdentityKey:
    """The §2.2 signature (attest; pairing-code and status, §2.1) with ``key``, the device's
    identity key that ``X-Key-Id`` names (None: it has none): key known (401 unknown_key) and
    live (401 key_revoked) → timestamp → signature → nonce, spent only once the signature
    verified (scope: the device)."""
    if key is None:
        raise UnknownKey()
    if key.revoked_at is not None:
        raise KeyRevoked()
    check_timestamp(signed.moment, now=now)
    message = attest_string_to_sign(
        device_id=device.device_id,
        key_id=signed.key_id,
        timestamp=signed.timestamp,
        nonce=signed.nonce,
    )
    try:
        verify_signature(unwrap_identity_secret(wrapper, key), message, signed.signature)
    except SignatureMismatch:
        raise InvalidSignature() from None
    await spend_nonce(
        cache, scope=f"device:{device.device_id}", nonce=signed.nonce, moment=signed.moment, now=now
    )
    return key


@dataclass
class AuthenticatedDevice:
    device: Device
    #: The identity key the signature verified with (None: the request was not signed).
    identity_key: MerchantDeviceIdentityKey | None = None


@dataclass(frozen=True)
class ActivationHeaders:
    """The activation headers (§2.1) and, when the route is signed, the §2.2 signature headers:
    the steps of the §1 order that read nothing (400, then 426 unless old apps may call)."""

    pos: PosHeaders
    signature: SignedHeaders | None
    upgrade_required: bool


def parse_activation_headers(
    request: Request, runtime: Runtime, *, allow_old: bool, signed: bool
) -> ActivationHeaders:
    headers = parse_pos_headers(request)
    signature = parse_signed_headers(request) if signed else None
    minimum = runtime.settings.min_pos_version
    old = version_below(headers.version, minimum)
    if old and not allow_old:
        raise AppVersionUnsupported(minimum)
    return ActivationHeaders(pos=headers, signature=signature, upgrade_required=old)


async def authenticate_device(
    db: AsyncSession, runtime: Runtime, parsed: ActivationHeaders, *, now: datetime
) -> AuthenticatedDevice:
    """The rest of the §1 order after :func:`parse_activation_headers`: device (404, 403) →
    when signed, the §2.2 signature (401) and its nonce; then the device is touched."""
    signature, version = parsed.signature, parsed.pos.version
    key_id = signature.key_id if signature is not None else None
    device, key = await load_device_with_key(db, parsed.pos.device_id, key_id)
    if signature is not None:
        key = await check_device_signature(
            runtime.cache,
            wrapper=runtime.wrapper,
            device=device,
            key=key,
            signed=signature,
            now=now,
        )
    touch(device, version=version, now=now)
    return AuthenticatedDevice(device=device, identity_key=key if signature is not None else None)


async def pairing_headers(request: Request) -> ActivationHeaders:
    """Pairing-code and status (§2.1), authenticated at mount as far as nothing is read: the
    headers, signed (§2.2) unless VIOPAY_PAIRING_SIGNATURE=off, and the version; the endpoint
    checks the device and the signature (:mod:`viopay.devices.quick`, else
    :func:`authenticate_device`). A coroutine although it awaits nothing: FastAPI runs a plain
    function dependency in its thread pool."""
    runtime = runtime_of(request)
    signed = runtime.settings.pairing_signature == "required"
    return parse_activation_headers(request, runtime, allow_old=False, signed=signed)


async def attest_headers(request: Request) -> ActivationHeaders:
    """Attest (§2.2), authenticated at mount as far as nothing is read: the activation headers,
    the signature headers and the version; the endpoint checks the device and the signature
    (:mod:`viopay.devices.quick`, else :func:`authenticate_device`)."""
    return parse_activation_headers(request, runtime_of(request), allow_old=False, signed=True)


async def bootstrap_headers(request: Request) -> ActivationHeaders:
    """Bootstrap (§3.1), authenticated at mount as far as nothing is read: the activation
    headers, at any version; the endpoint reads the device (:mod:`viopay.devices.quick`)."""
    return parse_activation_headers(request, runtime_of(request), allow_old=True, signed=False)


PairingHeaders = Annotated[ActivationHeaders, Depends(pairing_headers)]
BootstrapHeaders = Annotated[ActivationHeaders, Depends(bootstrap_headers)]
AttestHeaders = Annotated[ActivationHeaders, Depends(attest_headers)]
