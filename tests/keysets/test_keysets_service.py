"""Key sets at the service level (PROTOCOL §3.6, §3.10), with an injected clock.

The device is claimed through the API of the backend's server; the services run in-process on
the same database, cache and master key (``runtime``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Select, select

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    MakeMerchant,
    ProvisionedDevice,
    present,
    signed_pos_headers,
)
from viopay.audit import Actor
from viopay.devices.models import Device
from viopay.errors import InvalidRequest, InvalidState
from viopay.ids import utcnow
from viopay.keysets import service as keysets
from viopay.keysets.models import KeySet, KeySetKey, KeySetStatus
from viopay.keysets.service import DeliveredKeySet
from viopay.runtime import Runtime
from viopay_device.protocol.kcv import kcv_for
from viopay_device.protocol.keyblocks import KEY_TYPES, WRAPPED_BY, unwrap_key
from viopay_device.protocol.transport import derive_ktk, generate_x25519, x25519_shared

GRACE = timedelta(seconds=600)


@pytest.fixture
def claimed(api: httpx.Client, admin: Admin, make_merchant: MakeMerchant) -> ProvisionedDevice:
    device = admin.provision()
    code = api.post("/pos/pairing-code", headers=signed_pos_headers(device)).json()["pairing_code"]
    response = make_merchant().http.post("/pos/claim", json={"pairing_code": code})
    assert response.status_code == 200, response.text
    return device


async def _create(
    runtime: Runtime, device: ProvisionedDevice, now: datetime, transport_key: bytes | None = None
) -> DeliveredKeySet:
    async with runtime.sessions() as db, db.begin():
        row = present(await db.get(Device, device.device_id))
        return await keysets.create_key_set(
            db,
            wrapper=runtime.wrapper,
            device=row,
            identity_key_id=device.key_id,
            identity_secret=device.secret,
            transport_key=transport_key or generate_x25519()[1],
            now=now,
        )


async def _activate(
    runtime: Runtime, key_set_id: str, now: datetime, grace: timedelta = GRACE
) -> KeySetStatus:
    async with runtime.sessions() as db, db.begin():
        key_set = present(await db.get(KeySet, key_set_id))
        return (await keysets.activate_key_set(db, key_set=key_set, now=now, grace=grace)).status


async def _statuses(runtime: Runtime, device_id: str) -> dict[str, KeySetStatus]:
    async with runtime.sessions() as db:
        rows = await db.scalars(select_sets(device_id))
        return {row.key_set_id: row.status for row in rows}


def select_sets(device_id: str) -> Select[KeySet]:
    return select(KeySet).where(KeySet.device_id == device_id)


async def _usable(runtime: Runtime, device_id: str, now: datetime) -> list[str]:
    async with runtime.sessions() as db:
        device = present(await db.get(Device, device_id))
        return [ks.key_set_id for ks in await keysets.usable_key_sets(db, device=device, now=now)]


async def test_delivered_blocks_unwrap_and_keys_are_stored_wrapped(
    runtime: Runtime, claimed: ProvisionedDevice
) -> None:
    now = utcnow()
    private, public = generate_x25519()
    delivered = await _create(runtime, claimed, now, transport_key=public)
    key_set = delivered.key_set
    assert key_set.key_set_id.startswith("ks_") and key_set.status is KeySetStatus.pending
    assert key_set.expires_at == now + timedelta(minutes=15)
    assert [k.type for k in delivered.keys] == list(KEY_TYPES)
    # The device side: X25519 + HKDF with the identity secret, then down the hierarchy.
    shared = x25519_shared(private, delivered.server_transport_key)
    wrapping = {
        "KTK": derive_ktk(
            shared=shared,
            identity_secret=claimed.secret,
            key_set_id=key_set.key_set_id,
            device_id=claimed.device_id,
        )
    }
    for entry in delivered.keys:
        assert entry.wrapped_by == WRAPPED_BY[entry.type]
        key = unwrap_key(wrapping[entry.wrapped_by], entry.key_block, expected_type=entry.type)
        assert kcv_for(entry.type, key) == entry.kcv
        wrapping[entry.type] = key
        SEEN_SECRETS.update({key.hex(), key.hex().upper()})
    async with runtime.sessions() as db:
        loaded = await keysets.load_keys(db, wrapper=runtime.wrapper, key_set_id=key_set.key_set_id)
        rows = (await db.scalars(select_keys(key_set.key_set_id))).all()
    assert dict(loaded.keys) == {t: wrapping[t] for t in KEY_TYPES}
    assert (
        loaded.key_ids["MAC"] == key_set.hmac_key_id and loaded.key_ids["MSK"] == key_set.msk_key_id
    )
    assert "keys=" not in repr(loaded) and wrapping["MSK"].hex() not in repr(loaded)
    for row in rows:  # at rest only under the master key
        assert wrapping[row.type] not in row.key_wrapped
        assert (
            runtime.wrapper.unwrap(row.key_wrapped, context=f"key:{row.key_id}")
            == wrapping[row.type]
        )


async def test_a_new_set_is_kept_unwrapped_as_a_read_would_unwrap_it(
    runtime: Runtime, claimed: ProvisionedDevice
) -> None:
    """The device asks for its config and activates right after the keys: the process keeps
    the set it just made, so neither reads and unwraps the six keys again."""
    key_set_id = (await _create(runtime, claimed, utcnow())).key_set.key_set_id
    kept = keysets.cached_keys(key_set_id)
    assert kept is not None
    keysets._SETS.pop(key_set_id)  # as past the cache's size: read from the table again
    async with runtime.sessions() as db:
        read = await keysets.load_keys(db, wrapper=runtime.wrapper, key_set_id=key_set_id)
    assert read is not kept
    assert dict(kept.keys) == dict(read.keys)
    assert (dict(kept.key_ids), dict(kept.kcvs)) == (dict(read.key_ids), dict(read.kcvs))


def select_keys(key_set_id: str) -> Select[KeySetKey]:
    return select(KeySetKey).where(KeySetKey.key_set_id == key_set_id)


async def test_key_ids_are_unique_and_typed(runtime: Runtime, claimed: ProvisionedDevice) -> None:
    now = utcnow()
    first, second = await _create(runtime, claimed, now), await _create(runtime, claimed, now)
    ids = [k.key_id for k in first.keys + second.keys]
    assert len(set(ids)) == 12
    assert [k.key_id.split("_")[0] for k in first.keys] == [
        "tmk",
        "kek",
        "msk",
        "tpk",
        "tdk",
        "mac",
    ]


@pytest.mark.parametrize("bad", [bytes(32), (1).to_bytes(32, "little")])
async def test_low_order_transport_key_is_refused(
    runtime: Runtime, claimed: ProvisionedDevice, bad: Any
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await _create(runtime, claimed, utcnow(), transport_key=bad)
    assert caught.value.extra["errors"][0]["field"] == "transport_key"


async def test_pending_set_expires_after_15_minutes(
    runtime: Runtime, claimed: ProvisionedDevice
) -> None:
    now = utcnow()
    ks = (await _create(runtime, claimed, now)).key_set.key_set_id
    assert await _usable(runtime, claimed.device_id, now + timedelta(minutes=15, seconds=-1)) == [
        ks
    ]
    assert await _usable(runtime, claimed.device_id, now + timedelta(minutes=15)) == []
    with pytest.raises(InvalidState, match="expired"):
        await _activate(runtime, ks, now + timedelta(minutes=15))


async def test_activation_and_rotation(runtime: Runtime, claimed: ProvisionedDevice) -> None:
    t0 = utcnow()
    a, b, c = [
        (await _create(runtime, claimed, t0 + timedelta(seconds=i))).key_set.key_set_id
        for i in range(3)
    ]
    assert await _usable(runtime, claimed.device_id, t0 + timedelta(seconds=3)) == [c, b, a]

    # Activating b retires the older a at once; the newer c stays pending.
    assert await _activate(runtime, b, t0 + timedelta(seconds=3)) is KeySetStatus.active
    assert await _statuses(runtime, claimed.device_id) == {
        a: KeySetStatus.retired,
        b: KeySetStatus.active,
        c: KeySetStatus.pending,
    }
    # Again: nothing changes. A superseded set cannot come back.
    assert await _activate(runtime, b, t0 + timedelta(seconds=4)) is KeySetStatus.active
    with pytest.raises(InvalidState, match="superseded"):
        await _activate(runtime, a, t0 + timedelta(seconds=4))

    # Rotation: b stays usable for the grace, counted from c's activation.
    t1 = t0 + timedelta(seconds=10)
    await _activate(runtime, c, t1)
    assert await _statuses(runtime, claimed.device_id) == {
        a: KeySetStatus.retired,
        b: KeySetStatus.previous,
        c: KeySetStatus.active,
    }
    assert await _usable(runtime, claimed.device_id, t1 + GRACE - timedelta(seconds=1)) == [c, b]
    assert await _usable(runtime, claimed.device_id, t1 + GRACE) == [c]
    async with runtime.sessions() as db:
        previous, active = present(await db.get(KeySet, b)), present(await db.get(KeySet, c))
        assert keysets.serves_charges(previous, now=t1) and keysets.serves_charges(active, now=t1)
        assert not keysets.serves_charges(previous, now=t1 + GRACE)
        assert previous.retires_at == t1 + GRACE and active.activated_at == t1

    # The next rotation retires the previous set at once.
    d = (await _create(runtime, claimed, t1 + timedelta(seconds=5))).key_set.key_set_id
    await _activate(runtime, d, t1 + timedelta(seconds=6))
    assert await _statuses(runtime, claimed.device_id) == {
        a: KeySetStatus.retired,
        b: KeySetStatus.retired,
        c: KeySetStatus.previous,
        d: KeySetStatus.active,
    }


async def test_zero_grace_retires_the_old_set_at_once(
    runtime: Runtime, claimed: ProvisionedDevice
) -> None:
    now = utcnow()
    a = (await _create(runtime, claimed, now)).key_set.key_set_id
    await _activate(runtime, a, now)
    b = (await _create(runtime, claimed, now + timedelta(seconds=1))).key_set.key_set_id
    await _activate(runtime, b, now + timedelta(seconds=1), grace=timedelta(0))
    assert (await _statuses(runtime, claimed.device_id))[a] is KeySetStatus.retired


async def test_pending_sets_do_not_serve_charges(
    runtime: Runtime, claimed: ProvisionedDevice
) -> None:
    now = utcnow()
    delivered = await _create(runtime, claimed, now)
    assert not keysets.serves_charges(delivered.key_set, now=now)
    async with runtime.sessions() as db:
        by_mac = await keysets.key_set_by_hmac_key_id(db, delivered.key_set.hmac_key_id)
        by_msk = await keysets.key_set_by_msk_key_id(db, delivered.key_set.msk_key_id)
        assert (
            present(by_mac).key_set_id == present(by_msk).key_set_id == delivered.key_set.key_set_id
        )
        assert await keysets.key_set_by_hmac_key_id(db, "mac_nope") is None


async def test_envelope_count_is_atomic(runtime: Runtime, claimed: ProvisionedDevice) -> None:
    ks = (await _create(runtime, claimed, utcnow())).key_set.key_set_id
    async with runtime.sessions() as db, db.begin():
        assert await keysets.count_envelopes(db, key_set_id=ks) == 1
        assert await keysets.count_envelopes(db, key_set_id=ks, count=2) == 3
    with pytest.raises(LookupError):
        async with runtime.sessions() as db, db.begin():
            await keysets.count_envelopes(db, key_set_id="ks_missing")


async def test_release_retires_every_set(runtime: Runtime, claimed: ProvisionedDevice) -> None:
    now = utcnow()
    a = (await _create(runtime, claimed, now)).key_set.key_set_id
    await _activate(runtime, a, now)
    b = (await _create(runtime, claimed, now + timedelta(seconds=1))).key_set.key_set_id
    async with runtime.sessions() as db, db.begin():
        device = present(await db.get(Device, claimed.device_id))
        generation = device.token_generation
        await keysets.release_device(db, device=device, actor=Actor.operator("test"), now=now)
        assert device.token_generation == generation + 1
    assert set((await _statuses(runtime, claimed.device_id)).values()) == {KeySetStatus.retired}
    assert await _usable(runtime, claimed.device_id, now) == []
    assert b  # both sets were the device's
