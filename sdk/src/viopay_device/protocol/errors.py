"""Errors of viopay.crypto. Messages never carry key material, plaintext or a hint of how
close a forgery came."""


class CryptoError(Exception):
    """Base of every error raised by viopay.crypto."""


class SignatureMismatch(CryptoError):
    """An X-Signature is malformed or does not match (401 invalid_signature)."""


class EnvelopeMalformed(CryptoError):
    """An envelope has a missing or mistyped member, or v != 1 (400 invalid_request)."""


class EnvelopeNotOpened(CryptoError):
    """An envelope or wrapped blob cannot be opened (400 decryption_failed)."""


class KeyBlockError(CryptoError):
    """A TR-31 key block cannot be made, or unwrapped to the expected key."""


class PinBlockError(CryptoError):
    """A PIN block cannot be made or deciphered."""
