"""Wire shapes of attest (§3.5) and keys (§3.6)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, WithJsonSchema


class AttestIn(BaseModel):
    """Attest takes no body, or ``{}`` (unknown members are ignored)."""

    model_config = ConfigDict(json_schema_extra={"description": "none, or {}"})


class AttestOut(BaseModel):
    attestation_token: str
    token_type: Literal["Attestation"] = "Attestation"
    expires_in: int
    expires_at: str
    device_status: str


_TRANSPORT_KEY_SCHEMA = {
    "type": "string",
    "format": "byte",
    "description": "base64 (padded) of the device's 32-byte X25519 public key",
}


class KeysIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"required": ["transport_key"]})

    # Checked by hand after the device status (§1: body members come after 409).
    transport_key: Annotated[object, WithJsonSchema(_TRANSPORT_KEY_SCHEMA)] = None


class KeyOut(BaseModel):
    type: str
    key_id: str
    wrapped_by: str
    key_block: str
    kcv: str


class KeysOut(BaseModel):
    key_set_id: str
    server_transport_key: str
    created_at: str
    expires_at: str
    keys: list[KeyOut]
