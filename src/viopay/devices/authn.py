"""POS activation headers (PROTOCOL §2.1) and the device they authenticate."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import semver
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.deps import DbSession, Now, RuntimeDep
from viopay.devices.models import Device
from viopay.errors import (
    AppVersionUnsupported,
    DeviceDisabled,
    DeviceNotFound,
    InvalidHeader,
)
from viopay.signatures import header

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


def parse_pos_headers(request: Request) -> PosHeaders:
    device_id = parse_device_id(request)
    match = USER_AGENT_RE.match(header(request, "User-Agent"))
    if match is None:
        raise InvalidHeader("User-Agent", "must be Viopay-POS/{semver} ({os}; {model})")
    if header(request, "X-Client-Type") != "pos":
        raise InvalidHeader("X-Client-Type", "must be pos")
    return PosHeaders(device_id=device_id, version=match["version"])


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


@dataclass
class AuthenticatedDevice:
    device: Device
    version: str
    upgrade_required: bool


async def _activation_device(
    request: Request, runtime: RuntimeDep, db: DbSession, now: Now, *, allow_old: bool
) -> AuthenticatedDevice:
    headers = parse_pos_headers(request)
    minimum = runtime.settings.min_pos_version
    old = version_below(headers.version, minimum)
    if old and not allow_old:
        raise AppVersionUnsupported(minimum)
    device = await load_device(db, headers.device_id)
    touch(device, version=headers.version, now=now)
    return AuthenticatedDevice(device=device, version=headers.version, upgrade_required=old)


async def activation_device(
    request: Request, runtime: RuntimeDep, db: DbSession, now: Now
) -> AuthenticatedDevice:
    return await _activation_device(request, runtime, db, now, allow_old=False)


async def bootstrap_device(
    request: Request, runtime: RuntimeDep, db: DbSession, now: Now
) -> AuthenticatedDevice:
    return await _activation_device(request, runtime, db, now, allow_old=True)


ActivationDevice = Annotated[AuthenticatedDevice, Depends(activation_device)]
BootstrapDevice = Annotated[AuthenticatedDevice, Depends(bootstrap_device)]
