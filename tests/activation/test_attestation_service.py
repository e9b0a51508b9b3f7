"""Attestation tokens at the service level (PROTOCOL §2.3), with an injected clock."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta

import httpx
import orjson
import pytest

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    MakeMerchant,
    ProvisionedDevice,
    present,
    signed_pos_headers,
)
from viopay.activation.attestation import (
    Attested,
    IssuedToken,
    TokenHeaders,
    attest_token,
    issue_token,
    verify_token,
)
from viopay.audit import Actor
from viopay.devices import service as devices
from viopay.devices.authn import identity_key_of
from viopay.devices.models import Device, MerchantDeviceIdentityKey
from viopay.errors import InvalidToken
from viopay.ids import utcnow
from viopay.runtime import Runtime


@pytest.fixture
def claimed(api: httpx.Client, admin: Admin, make_merchant: MakeMerchant) -> ProvisionedDevice:
    device = admin.provision()
    code = api.post("/pos/pairing-code", headers=signed_pos_headers(device)).json()["pairing_code"]
    assert make_merchant().http.post("/pos/claim", json={"pairing_code": code}).status_code == 200
    return device


async def _issue(runtime: Runtime, device: ProvisionedDevice, now: datetime) -> IssuedToken:
    async with runtime.sessions() as db:
        row = present(await db.get(Device, device.device_id))
        key = present(await identity_key_of(db, device_id=device.device_id, key_id=device.key_id))
        issued = await issue_token(runtime.cache, device=row, identity_key=key, now=now)
    SEEN_SECRETS.add(issued.token)
    return issued


async def _verify(
    runtime: Runtime, token: str, device_id: str, now: datetime
) -> MerchantDeviceIdentityKey:
    async with runtime.sessions() as db:
        device = present(await db.get(Device, device_id))
        return await verify_token(db, runtime.cache, token=token, device=device, now=now)


async def test_token_shape_and_what_the_cache_keeps(
    runtime: Runtime, claimed: ProvisionedDevice
) -> None:
    now = utcnow()
    issued = await _issue(runtime, claimed, now)
    assert re.fullmatch(r"att_[A-Za-z0-9_-]{43}", issued.token)
    assert issued.expires_at == now + timedelta(seconds=300)
    assert issued.token not in repr(issued)
    raw = await runtime.cache.get("att:" + hashlib.sha256(issued.token.encode()).hexdigest())
    assert (
        raw is not None
        and issued.token.encode() not in raw
        and issued.token[4:].encode() not in raw
    )
    record = orjson.loads(raw)
    assert record["device_id"] == claimed.device_id and record["key_id"] == claimed.key_id
    assert await runtime.cache.get("att:" + issued.token) is None


async def test_token_lives_300_seconds(runtime: Runtime, claimed: ProvisionedDevice) -> None:
    now = utcnow()
    issued = await _issue(runtime, claimed, now)
    key = await _verify(runtime, issued.token, claimed.device_id, now + timedelta(seconds=299))
    assert key.key_id == claimed.key_id
    with pytest.raises(InvalidToken):
        await _verify(runtime, issued.token, claimed.device_id, now + timedelta(seconds=300))


async def test_token_is_bound_to_its_device(
    runtime: Runtime, claimed: ProvisionedDevice, admin: Admin
) -> None:
    other = admin.provision()
    issued = await _issue(runtime, claimed, utcnow())
    with pytest.raises(InvalidToken):
        await _verify(runtime, issued.token, other.device_id, utcnow())


async def test_unknown_token(runtime: Runtime, claimed: ProvisionedDevice) -> None:
    with pytest.raises(InvalidToken) as caught:
        await _verify(runtime, "att_" + "A" * 43, claimed.device_id, utcnow())
    assert caught.value.headers["WWW-Authenticate"].startswith("Attestation")


async def test_disable_kills_and_enable_does_not_revive(
    runtime: Runtime, claimed: ProvisionedDevice
) -> None:
    issued = await _issue(runtime, claimed, utcnow())
    for disabled in (True, False):
        async with runtime.sessions() as db, db.begin():
            device = present(await db.get(Device, claimed.device_id))
            await devices.set_disabled(
                db, device=device, disabled=disabled, actor=Actor.operator("t"), now=utcnow()
            )
    with pytest.raises(InvalidToken):
        await _verify(runtime, issued.token, claimed.device_id, utcnow())
    fresh = await _issue(runtime, claimed, utcnow())
    assert (
        await _verify(runtime, fresh.token, claimed.device_id, utcnow())
    ).key_id == claimed.key_id


async def test_revoking_the_key_kills_its_tokens_only(
    runtime: Runtime, claimed: ProvisionedDevice, admin: Admin
) -> None:
    issued = await _issue(runtime, claimed, utcnow())
    async with runtime.sessions() as db, db.begin():
        second = await devices.add_identity_key(
            db,
            wrapper=runtime.wrapper,
            device_id=claimed.device_id,
            key_id="second-key",
            actor=Actor.operator("t"),
            now=utcnow(),
        )
        SEEN_SECRETS.add(second.identity_secret)
        await devices.revoke_identity_key(
            db,
            device_id=claimed.device_id,
            key_id=claimed.key_id,
            actor=Actor.operator("t"),
            now=utcnow(),
        )
    with pytest.raises(InvalidToken):
        await _verify(runtime, issued.token, claimed.device_id, utcnow())


async def test_attested_unwraps_the_secret_lazily(
    runtime: Runtime, claimed: ProvisionedDevice
) -> None:
    async with runtime.sessions() as db:
        device = present(await db.get(Device, claimed.device_id))
        key = present(await identity_key_of(db, device_id=claimed.device_id, key_id=claimed.key_id))
    attested = Attested(device=device, identity_key=key, wrapper=runtime.wrapper)
    assert attested._secret is None
    assert attested.identity_secret() == claimed.secret
    assert claimed.identity_secret not in repr(attested) and "_secret" not in repr(attested)


@pytest.mark.parametrize("stored", [b"not json", b"[1, 2]", b"42", b'"att"', b"null", b"{"])
async def test_a_record_that_is_not_a_token_record_is_invalid_token(
    runtime: Runtime, claimed: ProvisionedDevice, stored: bytes
) -> None:
    """Only our own writes put token records in the cache; one that is not a JSON object is
    refused as a missing one (401), on both ways a token is checked, never a 500."""
    issued = await _issue(runtime, claimed, utcnow())
    cache_key = "att:" + hashlib.sha256(issued.token.encode()).hexdigest()
    await runtime.cache.set(cache_key, stored, ttl=60)
    with pytest.raises(InvalidToken):
        await _verify(runtime, issued.token, claimed.device_id, utcnow())
    headers = TokenHeaders(token=issued.token, device_id=claimed.device_id)
    async with runtime.sessions() as db:
        with pytest.raises(InvalidToken):
            await attest_token(db, runtime, headers, now=utcnow())
