"""The wire protocol's cryptography (PROTOCOL §2.2, §2.4, §3.6, §3.7, §4.1): small pure
functions, one per operation, tested against the spec's vectors and shared by the terminal
(this SDK) and the server.

Modules: ``signing`` (HMAC request signatures), ``envelope`` (MSK/TDK AES-GCM envelopes),
``kcv`` (key check values), ``transport`` (X25519 + HKDF key transport key), ``keyblocks``
(TR-31 version D via psec), ``pinblock`` (ISO 9564 format 4 via psec). Only the errors are
re-exported here; import the operations from their modules.
"""

from viopay_device.protocol.errors import (
    CryptoError,
    EnvelopeMalformed,
    EnvelopeNotOpened,
    KeyBlockError,
    PinBlockError,
    SignatureMismatch,
)

__all__ = [
    "CryptoError",
    "EnvelopeNotOpened",
    "EnvelopeMalformed",
    "KeyBlockError",
    "PinBlockError",
    "SignatureMismatch",
]
