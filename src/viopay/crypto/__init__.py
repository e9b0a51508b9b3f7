"""Viopay cryptography: small pure functions, one per operation, vector-tested.

Modules: ``signing`` (HMAC request signatures, §2.2/§2.4), ``envelope`` (MSK/TDK AES-GCM
envelopes, §3.7), ``kcv`` (key check values), ``transport`` (X25519 + HKDF key transport key),
``keyblocks`` (TR-31 version D via psec), ``pinblock`` (ISO 9564 format 4 via psec),
``canonical`` (RFC 8785 JSON) and ``wrapping`` (keys at rest under the master key).

Only the errors are re-exported here; import the operations from their modules.
"""

from viopay.crypto.errors import (
    CryptoError,
    DecryptionFailed,
    EnvelopeMalformed,
    KeyBlockError,
    PinBlockError,
    SignatureMismatch,
)

__all__ = [
    "CryptoError",
    "DecryptionFailed",
    "EnvelopeMalformed",
    "KeyBlockError",
    "PinBlockError",
    "SignatureMismatch",
]
