"""HMAC-SHA256 request signatures (PROTOCOL §2.2 attestation, §2.4 charges)."""

import hmac
import re

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from viopay_device.protocol._b64 import b64encode
from viopay_device.protocol.errors import SignatureMismatch

# \Z rather than $: a trailing line feed must not slip through .match().
SIGNATURE_RE: re.Pattern[str] = re.compile(r"^v1=[A-Za-z0-9+/]{43}=\Z")

_PREFIX = "v1="


def _join(parts: list[bytes]) -> bytes:
    # Only the charge BODY may hold a line feed; anywhere else it would make the string to
    # sign split back into its parts more than one way.
    if any(b"\n" in part for part in parts):
        raise ValueError("signed fields other than the body must not contain a line feed")
    return b"\n".join(parts)


def attest_string_to_sign(*, device_id: str, key_id: str, timestamp: str, nonce: str) -> bytes:
    """DEVICE_ID \\n KEY_ID \\n TIMESTAMP \\n NONCE, each as sent, no trailing newline."""
    return _join([s.encode("utf-8") for s in (device_id, key_id, timestamp, nonce)])


def charge_string_to_sign(
    *,
    method: str,
    path: str,
    query: str,
    body: bytes,
    terminal_id: str,
    timestamp: str,
    nonce: str,
) -> bytes:
    """METHOD \\n PATH \\n QUERY \\n BODY \\n TERMINAL_ID \\n TIMESTAMP \\n NONCE.

    METHOD is upper-cased; BODY is the exact body bytes (empty for none).
    """
    head = _join([s.encode("utf-8") for s in (method.upper(), path, query)])
    tail = _join([s.encode("utf-8") for s in (terminal_id, timestamp, nonce)])
    return b"\n".join([head, body, tail])


def sign(key: bytes, message: bytes) -> str:
    """Return ``"v1=" + base64(HMAC-SHA256(key, message))``."""
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(message)
    return _PREFIX + b64encode(mac.finalize())


def verify_signature(key: bytes, message: bytes, signature: str) -> None:
    """Raise SignatureMismatch unless ``signature`` is exactly ``sign(key, message)``."""
    if not isinstance(signature, str) or not SIGNATURE_RE.fullmatch(signature):
        raise SignatureMismatch("invalid signature")
    expected = sign(key, message).encode("ascii")
    if not hmac.compare_digest(expected, signature.encode("ascii")):
        raise SignatureMismatch("invalid signature")
