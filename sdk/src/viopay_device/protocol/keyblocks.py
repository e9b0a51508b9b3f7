"""TR-31 (ANSI X9.143) version D key blocks of a key set (§3.6), made and opened by psec."""

from dataclasses import dataclass
from typing import Final

from psec import tr31

from viopay_device.protocol.errors import KeyBlockError

KEY_TYPES: tuple[str, ...] = ("TMK", "KEK", "MSK", "TPK", "TDK", "MAC")
WRAPPED_BY: dict[str, str] = {
    "TMK": "KTK",
    "KEK": "TMK",
    "MSK": "KEK",
    "TPK": "KEK",
    "TDK": "KEK",
    "MAC": "KEK",
}
VERSION_ID: Final = "D"
KEY_LENGTH: Final = 32  # AES-256 keys and the 32-byte HMAC-SHA256 key alike


@dataclass(frozen=True)
class KeyBlockHeader:
    """The fixed header fields of one key type (the §3.6 table)."""

    key_usage: str
    algorithm: str
    mode_of_use: str
    version_num: str = "00"
    exportability: str = "N"
    version_id: str = VERSION_ID

    def to_psec(self) -> tr31.Header:
        return tr31.Header(
            version_id=self.version_id,
            key_usage=self.key_usage,
            algorithm=self.algorithm,
            mode_of_use=self.mode_of_use,
            version_num=self.version_num,
            exportability=self.exportability,
        )

    def matches(self, header: tr31.Header) -> bool:
        return (
            header.version_id,
            header.key_usage,
            header.algorithm,
            header.mode_of_use,
            header.version_num,
            header.exportability,
        ) == (
            self.version_id,
            self.key_usage,
            self.algorithm,
            self.mode_of_use,
            self.version_num,
            self.exportability,
        )


HEADERS: dict[str, KeyBlockHeader] = {
    "TMK": KeyBlockHeader("K0", "A", "B"),
    "KEK": KeyBlockHeader("K0", "A", "B"),
    "MSK": KeyBlockHeader("D0", "A", "B"),
    "TPK": KeyBlockHeader("P0", "A", "E"),
    "TDK": KeyBlockHeader("D0", "A", "E"),
    "MAC": KeyBlockHeader("M7", "H", "C"),
}


def wrap_key(kbpk: bytes, key_type: str, key: bytes) -> str:
    """Wrap a 32-byte key of ``key_type`` under ``kbpk`` into a version D key block."""
    header = HEADERS.get(key_type)
    if header is None:
        raise KeyBlockError("unknown key type")
    if len(key) != KEY_LENGTH:
        raise KeyBlockError("keys of a key set are 32 bytes")
    try:
        return tr31.wrap(kbpk, header.to_psec(), key)
    except ValueError:  # psec's HeaderError and KeyBlockError; messages may echo data
        raise KeyBlockError("key block could not be made") from None


def unwrap_key(kbpk: bytes, key_block: str, *, expected_type: str | None = None) -> bytes:
    """Unwrap a version D key block; with ``expected_type``, also insist on that type's
    header fields and a 32-byte key. KeyBlockError on any failure."""
    expected = None
    if expected_type is not None:
        expected = HEADERS.get(expected_type)
        if expected is None:
            raise KeyBlockError("unknown key type")
    if not isinstance(key_block, str) or not key_block.isascii() or key_block[:1] != VERSION_ID:
        raise KeyBlockError("key block is not a TR-31 version D block")
    try:
        header, key = tr31.unwrap(kbpk, key_block)
    except (ValueError, IndexError):
        raise KeyBlockError("key block could not be unwrapped") from None
    if expected is not None and (not expected.matches(header) or len(key) != KEY_LENGTH):
        raise KeyBlockError(f"key block is not a {expected_type} key block")
    return key
