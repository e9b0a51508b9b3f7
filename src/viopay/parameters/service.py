"""Legacy terminal_parameters documents (PROTOCOL §3.9, §6): storage, fallback and chunks.

A document is a JSON object the protocol does not fix. It is serialised once (sorted keys,
compact), gzip-compressed with ``mtime=0`` (so the same document makes the same stream) and
stored compressed with its size and SHA-256. A terminal gets its own document, else the
operator's default, else the built-in default.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor, record_event
from viopay.db import insert_for
from viopay.devices.models import Terminal
from viopay.errors import InvalidRequest, NotFound
from viopay.parameters.defaults import builtin_document
from viopay.parameters.models import DEFAULT_KEY, TerminalParameters

CHUNK_SIZE = 32_768
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024  # the admin API's body limit (§6)
GZIP_LEVEL = 9


@dataclass(frozen=True)
class ParametersBlob:
    """A gzip stream as served: its bytes, size and SHA-256 (lower-case hex)."""

    gzip_bytes: bytes
    size: int
    sha256: str

    @classmethod
    def of(cls, stream: bytes) -> ParametersBlob:
        return cls(gzip_bytes=stream, size=len(stream), sha256=hashlib.sha256(stream).hexdigest())

    def __repr__(self) -> str:
        return f"ParametersBlob(size={self.size}, sha256={self.sha256!r})"


def pack(document: dict[str, Any]) -> ParametersBlob:
    """Serialise and gzip a document, the same bytes for the same document every time."""
    if not isinstance(document, dict):
        raise InvalidRequest("the terminal parameters document must be a JSON object")
    try:
        raw = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        raise InvalidRequest(
            "the terminal parameters document is not representable as JSON"
        ) from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise InvalidRequest("the terminal parameters document is over 8 MiB")
    return ParametersBlob.of(gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0))


@functools.cache
def builtin_parameters() -> ParametersBlob:
    """The built-in default, made once per process."""
    return pack(builtin_document())


async def builtin_blob() -> ParametersBlob:
    """:func:`builtin_parameters`, made off the event loop the first time (~10 ms of gzip)."""
    if builtin_parameters.cache_info().currsize:
        return builtin_parameters()  # made already: no thread hop for each chunk
    return await asyncio.to_thread(builtin_parameters)


def chunk_count(blob: ParametersBlob) -> int:
    return -(-blob.size // CHUNK_SIZE)


def chunk(blob: ParametersBlob, index: int) -> bytes:
    """Chunk ``index`` of the stream (every chunk but the last is CHUNK_SIZE bytes)."""
    if not 0 <= index < chunk_count(blob):
        raise InvalidRequest(
            f"chunk must be from 0 to {chunk_count(blob) - 1}",
            errors=[{"field": "chunk", "message": "chunk index out of range"}],
        )
    return blob.gzip_bytes[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]


# The terminal's own row, else the operator's default: one row, so one stream (~100 KiB) read.
_OWN_ELSE_DEFAULT = (
    select(TerminalParameters)
    .where(TerminalParameters.terminal_id.in_([bindparam("terminal_id"), bindparam("default")]))
    .order_by((TerminalParameters.terminal_id == bindparam("default")).asc())
    .limit(1)
)


async def parameters_for(db: AsyncSession, terminal_id: str) -> ParametersBlob:
    """The terminal's own document, else the operator's default, else the built-in one."""
    row = await db.scalar(_OWN_ELSE_DEFAULT, {"terminal_id": terminal_id, "default": DEFAULT_KEY})
    if row is None:
        return await builtin_blob()
    return ParametersBlob(gzip_bytes=row.gzip, size=row.size, sha256=row.sha256)


async def get_terminal(db: AsyncSession, terminal_id: str) -> Terminal:
    """A live terminal; a released (retired) or unknown one is 404."""
    terminal = await db.get(Terminal, terminal_id)
    if terminal is None or terminal.retired_at is not None or terminal_id == DEFAULT_KEY:
        raise NotFound("no such terminal")
    return terminal


async def set_parameters(
    db: AsyncSession,
    *,
    terminal_id: str | None,
    document: dict[str, Any],
    actor: Actor,
    now: datetime,
) -> ParametersBlob:
    """Store ``document`` for one terminal, or (``terminal_id=None``) as the operator default."""
    merchant_id = None
    if terminal_id is not None:
        merchant_id = (await get_terminal(db, terminal_id)).merchant_id
    blob = await asyncio.to_thread(pack, document)
    key = terminal_id or DEFAULT_KEY
    if (
        await db.scalar(
            select(TerminalParameters.sha256).where(TerminalParameters.terminal_id == key)
        )
        == blob.sha256
    ):
        return blob  # the same document again: nothing changes
    values = {
        "terminal_id": key,
        "gzip": blob.gzip_bytes,
        "size": blob.size,
        "sha256": blob.sha256,
        "updated_at": now,
    }
    changes = {name: values[name] for name in ("gzip", "size", "sha256", "updated_at")}
    await db.execute(
        insert_for(db.get_bind().dialect.name)(TerminalParameters)
        .values(**values)
        .on_conflict_do_update(index_elements=["terminal_id"], set_=changes)
    )
    record_event(
        db,
        type="terminal_parameters.updated",
        actor=actor,
        subject_type="terminal",
        subject_id=key,
        merchant_id=merchant_id,
        now=now,
        data={
            "scope": "terminal" if terminal_id else "default",
            "size": blob.size,
            "sha256": blob.sha256,
        },
    )
    await db.flush()
    return blob
