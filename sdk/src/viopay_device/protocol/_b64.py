"""Strict RFC 4648 §4 base64 (with padding) shared by the crypto modules."""

import base64
import binascii
import re

_B64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: str) -> bytes:
    """Decode canonical padded base64; raise ValueError on anything else.

    Non-zero pad bits are refused too, so one byte string has exactly one accepted text.
    """
    if not _B64_RE.fullmatch(text):
        raise ValueError("invalid base64")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("invalid base64") from None
    if b64encode(data) != text:
        raise ValueError("invalid base64")
    return data
