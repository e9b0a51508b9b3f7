"""Reassembling the chunked terminal_parameters document (PROTOCOL.md §3.9).

The chunk meta of the first answer (count, size, sha256) is authenticated by the envelope's AAD
and must repeat in every later chunk; each chunk's envelope is opened with the AAD of the index
the SDK asked for, so a chunk moved, swapped or re-labelled fails to open. The reassembled
gzip stream must have the announced size and SHA-256 before it is decompressed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import zlib
from dataclasses import dataclass

from viopay_device._json import Fields, loads_object
from viopay_device.errors import ProtocolError, ResponseIntegrityError
from viopay_device.models import TerminalParameters

#: The protocol's chunk size: every chunk but the last holds exactly this many bytes.
CHUNK_SIZE = 32_768
#: The most gzip bytes the SDK accepts, and the most JSON bytes it inflates them to.
MAX_COMPRESSED_SIZE = 16 * 1024 * 1024
MAX_DOCUMENT_SIZE = 64 * 1024 * 1024

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ChunkMeta:
    index: int
    count: int
    size: int
    sha256: str

    @classmethod
    def from_json(cls, obj: object) -> ChunkMeta:
        f = Fields(obj, "chunk")
        meta = cls(
            index=f.integer("index"),
            count=f.integer("count"),
            size=f.integer("size"),
            sha256=f.text("sha256").lower(),
        )
        if not _SHA256_HEX.match(meta.sha256):
            raise ProtocolError("chunk: sha256 must be 64 hex digits")
        if not 0 < meta.size <= MAX_COMPRESSED_SIZE:
            raise ProtocolError("chunk: size out of range")
        if meta.count != -(-meta.size // CHUNK_SIZE):
            raise ProtocolError("chunk: count does not match size")
        return meta


class ChunkAssembler:
    """Collects chunks 0, 1, ... and checks them against the first chunk's meta."""

    def __init__(self) -> None:
        self._first: ChunkMeta | None = None
        self._parts: list[bytes] = []

    @property
    def next_index(self) -> int:
        return len(self._parts)

    @property
    def complete(self) -> bool:
        return self._first is not None and len(self._parts) == self._first.count

    def check_meta(self, obj: object) -> ChunkMeta:
        """The meta of the chunk just answered; it must be the one asked for and agree with
        the first chunk's."""
        meta = ChunkMeta.from_json(obj)
        if meta.index != self.next_index:
            raise ResponseIntegrityError("chunk: answered another index than asked")
        first = self._first or meta
        if (meta.count, meta.size, meta.sha256) != (first.count, first.size, first.sha256):
            raise ResponseIntegrityError("chunk: meta differs from the first chunk")
        self._first = first
        return meta

    def add(self, data: bytes) -> None:
        first = self._first
        assert first is not None, "check_meta first"
        is_last = len(self._parts) == first.count - 1
        expected = first.size - CHUNK_SIZE * (first.count - 1) if is_last else CHUNK_SIZE
        if len(data) != expected:
            raise ResponseIntegrityError("chunk: wrong length")
        self._parts.append(data)

    def finish(self) -> TerminalParameters:
        first = self._first
        assert first is not None and self.complete, "all chunks first"
        stream = b"".join(self._parts)
        digest = hashlib.sha256(stream).hexdigest()
        if len(stream) != first.size or not hmac.compare_digest(digest, first.sha256):
            raise ResponseIntegrityError("terminal parameters: size or SHA-256 mismatch")
        document = loads_object(_gunzip(stream), "terminal parameters")
        return TerminalParameters(
            sha256=first.sha256, size=first.size, chunk_count=first.count, document=document
        )


def _gunzip(stream: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(stream, MAX_DOCUMENT_SIZE)
    except zlib.error:
        raise ProtocolError("terminal parameters: not a gzip stream") from None
    if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        raise ProtocolError("terminal parameters: gzip stream too large or not a single member")
    return out
