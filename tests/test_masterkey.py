"""The master key check of PROTOCOL §6, at the service level on both backends: the servers'
start recorded the check value of their master key; another key is refused, the same passes."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import select

from viopay.crypto.wrapping import MasterKeyWrapper, check_value
from viopay.ids import utcnow
from viopay.masterkey import MasterKeyCheck, MasterKeyMismatch, verify_master_key
from viopay.runtime import Runtime


def test_check_values_tell_keys_apart_and_are_stable() -> None:
    key = secrets.token_bytes(32)
    value = check_value(MasterKeyWrapper(key))
    assert len(value) == 16 and int(value, 16) >= 0
    assert check_value(MasterKeyWrapper(key)) == value
    assert check_value(MasterKeyWrapper(secrets.token_bytes(32))) != value
    assert value not in key.hex()


async def test_the_database_accepts_its_own_master_key_only(runtime: Runtime) -> None:
    own = await verify_master_key(runtime.sessions, runtime.wrapper, now=utcnow())
    assert own == check_value(runtime.wrapper)
    other = MasterKeyWrapper(secrets.token_bytes(32))
    with pytest.raises(MasterKeyMismatch) as refused:
        await verify_master_key(runtime.sessions, other, now=utcnow())
    assert refused.value.stored == [own] and refused.value.given == check_value(other)
    async with runtime.sessions() as session:
        stored = (await session.scalars(select(MasterKeyCheck.check_value))).all()
    assert list(stored) == [own]  # the refused key left nothing behind
