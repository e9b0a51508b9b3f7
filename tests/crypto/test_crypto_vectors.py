"""Every case of every shared/spec/vectors/*.json file, against viopay.crypto."""

from pathlib import Path
from typing import Any

import pytest

from viopay_device.protocol._b64 import b64decode_strict
from viopay_device.protocol.envelope import (
    Envelope,
    open_envelope,
    parse_envelope,
    request_aad,
    response_aad,
    seal,
)
from viopay_device.protocol.errors import EnvelopeNotOpened
from viopay_device.protocol.kcv import aes_kcv, kcv_for
from viopay_device.protocol.keyblocks import unwrap_key, wrap_key
from viopay_device.protocol.pinblock import decipher_pin_block, encipher_pin_block
from viopay_device.protocol.signing import (
    attest_string_to_sign,
    charge_string_to_sign,
    sign,
    verify_signature,
)
from viopay_device.protocol.transport import derive_ktk, x25519_shared

Vector = dict[str, Any]


def test_every_vector_file_is_covered(spec_vectors_dir: Path, vector_files: dict[str, str]) -> None:
    on_disk = {p.name for p in spec_vectors_dir.glob("*.json")}
    assert on_disk == set(vector_files.values())


def test_attest_signature(attest_vector: Vector) -> None:
    v = attest_vector
    message = attest_string_to_sign(
        device_id=v["device_id"], key_id=v["key_id"], timestamp=v["timestamp"], nonce=v["nonce"]
    )
    assert message == v["string_to_sign"].encode()
    key = bytes.fromhex(v["identity_secret_hex"])
    assert sign(key, message) == v["x_signature"]
    verify_signature(key, message, v["x_signature"])


def test_charge_signature(charge_vector: Vector) -> None:
    v = charge_vector
    message = charge_string_to_sign(
        method=v["method"].lower(),  # upper-cased by the function
        path=v["path"],
        query=v["query"],
        body=v["body"].encode(),
        terminal_id=v["terminal_id"],
        timestamp=v["timestamp"],
        nonce=v["nonce"],
    )
    assert message == v["string_to_sign"].encode()
    key = bytes.fromhex(v["mac_key_hex"])
    assert sign(key, message) == v["x_signature"]
    verify_signature(key, message, v["x_signature"])


def test_kcv(kcv_vector: Vector) -> None:
    key = bytes.fromhex(kcv_vector["key_hex"])
    assert kcv_for(kcv_vector["type"], key) == kcv_vector["kcv"]


def test_key_transport(transport_vector: Vector) -> None:
    v = transport_vector
    device_private = bytes.fromhex(v["device_private_hex"])
    server_private = bytes.fromhex(v["server_private_hex"])
    device_public = b64decode_strict(v["device_public_b64"])
    server_public = b64decode_strict(v["server_public_b64"])
    shared = x25519_shared(server_private, device_public)
    assert shared.hex() == v["shared_hex"]
    assert x25519_shared(device_private, server_public) == shared
    ktk = derive_ktk(
        shared=shared,
        identity_secret=bytes.fromhex(v["identity_secret_hex"]),
        key_set_id=v["key_set_id"],
        device_id=v["device_id"],
    )
    assert ktk.hex() == v["ktk_hex"]
    tmk = unwrap_key(ktk, v["tmk_block"], expected_type="TMK")
    assert tmk.hex() == v["tmk_hex"]
    assert aes_kcv(tmk) == v["tmk_kcv"]
    # Our own TMK block has the vector's header and length (the rest is random padding).
    ours = wrap_key(ktk, "TMK", tmk)
    assert ours[:16] == v["tmk_block"][:16]
    assert len(ours) == len(v["tmk_block"])


def _aad_for(v: Vector) -> bytes:
    label, direction, method, path, subject, *rest = v["aad"].split("\n")
    assert (label, direction) == ("viopay-msk-v1", v["direction"])
    if direction == "req":
        assert rest == []
        return request_aad(method=method, path=path, subject=subject)
    (nonce,) = rest
    return response_aad(method=method, path=path, subject=subject, nonce=nonce)


def test_envelope(envelope_vector: Vector) -> None:
    v = envelope_vector
    key = bytes.fromhex(v["msk_hex"])
    aad = _aad_for(v)
    assert aad == v["aad"].encode()
    wire = v["envelope"]
    sealed = seal(key, wire["kid"], v["plaintext"].encode(), aad, iv=b64decode_strict(wire["iv"]))
    assert sealed == wire
    envelope = parse_envelope(wire)
    assert open_envelope(key, envelope, aad) == v["plaintext"].encode()
    with pytest.raises(EnvelopeNotOpened):
        open_envelope(key, envelope, aad + b"x")
    with pytest.raises(EnvelopeNotOpened):
        open_envelope(key, envelope, aad.replace(b"TID-004812", b"TID-004813"))
    # The kid is not authenticated here; choosing the key by kid is the caller's job.
    assert open_envelope(key, Envelope("other", envelope.iv, envelope.ct), aad)


def test_pin_block(pin_vector: Vector) -> None:
    tpk = bytes.fromhex(pin_vector["tpk_hex"])
    pan, pin = pin_vector["pan"], pin_vector["pin"]
    assert decipher_pin_block(tpk=tpk, pin_block=pin_vector["pin_block_hex"], pan=pan) == pin
    ours = encipher_pin_block(tpk=tpk, pin=pin, pan=pan)
    assert decipher_pin_block(tpk=tpk, pin_block=ours, pan=pan) == pin


def test_webhook_signature(webhook_vector: Vector) -> None:
    from standardwebhooks import Webhook

    from viopay.crypto.webhooks import secret_bytes, verify_webhook_signature, webhook_signature

    v = webhook_vector
    body = v["body"].encode()
    assert secret_bytes(v["secret"]).hex() == v["secret_bytes_hex"]
    signed = webhook_signature(
        v["secret"], webhook_id=v["webhook_id"], timestamp=v["webhook_timestamp"], body=body
    )
    assert signed == v["webhook_signature"]
    assert verify_webhook_signature(
        v["secret"],
        webhook_id=v["webhook_id"],
        timestamp=v["webhook_timestamp"],
        body=body,
        header=f"v1,{'A' * 44} {signed}",
    )
    assert not verify_webhook_signature(
        v["secret"],
        webhook_id=v["webhook_id"],
        timestamp=v["webhook_timestamp"] + 1,
        body=body,
        header=signed,
    )
    # Cross-check with the reference implementation (its sign() takes a datetime).
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(v["webhook_timestamp"], tz=UTC)
    assert Webhook(v["secret"]).sign(v["webhook_id"], moment, v["body"]) == signed
