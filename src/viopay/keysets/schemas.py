"""Wire shapes of the operator's key lifecycle (admin API): ids, check values, states and ages,
never a key."""

from __future__ import annotations

from pydantic import BaseModel

from viopay.devices.schemas import RevokedKeyOut
from viopay.ids import rfc3339
from viopay.keysets.lifecycle import IdentityKeyView, KeySetView, Revocation


class IdentityKeyViewOut(BaseModel):
    key_id: str
    kcv: str
    state: str
    created_at: str
    revoked_at: str | None
    age_seconds: int

    @classmethod
    def of(cls, view: IdentityKeyView) -> IdentityKeyViewOut:
        return cls(
            key_id=view.key_id,
            kcv=view.kcv,
            state=view.state,
            created_at=rfc3339(view.created_at),
            revoked_at=rfc3339(view.revoked_at) if view.revoked_at else None,
            age_seconds=view.age_seconds,
        )


class IdentityKeyList(BaseModel):
    device_id: str
    data: list[IdentityKeyViewOut]


class KeySetViewOut(BaseModel):
    key_set_id: str
    device_id: str
    state: str
    identity_key_id: str
    created_at: str
    activated_at: str | None
    expires_at: str
    retires_at: str | None
    retired_at: str | None
    rotate_requested_at: str | None
    envelope_count: int
    age_seconds: int
    key_ids: dict[str, str]
    kcv: dict[str, str]

    @classmethod
    def of(cls, view: KeySetView) -> KeySetViewOut:
        s = view.key_set

        def t(value: object) -> str | None:
            from datetime import datetime

            return rfc3339(value) if isinstance(value, datetime) else None

        return cls(
            key_set_id=s.key_set_id,
            device_id=s.device_id,
            state=view.state,
            identity_key_id=s.identity_key_id,
            created_at=rfc3339(s.created_at),
            activated_at=t(s.activated_at),
            expires_at=rfc3339(s.expires_at),
            retires_at=t(s.retires_at),
            retired_at=t(s.retired_at),
            rotate_requested_at=t(s.rotate_requested_at),
            envelope_count=s.envelope_count,
            age_seconds=view.age_seconds,
            key_ids=view.key_ids,
            kcv=view.kcvs,
        )


class KeySetList(BaseModel):
    terminal_id: str
    data: list[KeySetViewOut]


class RotationRequestedOut(BaseModel):
    terminal_id: str
    key_set_id: str
    rotate_requested_at: str


class RevocationOut(RevokedKeyOut):
    """PROTOCOL §6's answer, plus what the revocation killed and what it left standing."""

    tokens_refused: bool
    pending_key_sets_retired: list[str]
    key_sets_still_serving: list[str]
    live_identity_keys: list[str]

    @classmethod
    def of(cls, device_id: str, report: Revocation) -> RevocationOut:
        assert report.key.revoked_at is not None
        return cls(
            device_id=device_id,
            key_id=report.key.key_id,
            revoked_at=rfc3339(report.key.revoked_at),
            tokens_refused=report.tokens_refused,
            pending_key_sets_retired=report.pending_key_sets_retired,
            key_sets_still_serving=report.key_sets_still_serving,
            live_identity_keys=report.live_identity_keys,
        )
