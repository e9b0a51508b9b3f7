"""Terminal parameters (PROTOCOL §3.9, §6): the built-in default, gzip, chunks, storage, upload."""

from __future__ import annotations

import gzip
import hashlib
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from support.helpers import Admin, Backend, MakeMerchant, present
from viopay.audit import Actor, AuditEvent
from viopay.devices.models import Device, DeviceStatus, Terminal
from viopay.errors import InvalidRequest, NotFound
from viopay.merchants import service
from viopay.parameters import service as parameters
from viopay.parameters.defaults import builtin_document
from viopay.parameters.models import DEFAULT_KEY, TerminalParameters
from viopay.parameters.service import CHUNK_SIZE, ParametersBlob, chunk, chunk_count, pack
from viopay.runtime import Runtime

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _reassemble(blob: ParametersBlob) -> bytes:
    return b"".join(chunk(blob, index) for index in range(chunk_count(blob)))


def test_the_builtin_default_spans_several_chunks() -> None:
    blob = parameters.builtin_parameters()
    assert chunk_count(blob) >= 3
    assert blob.size == len(blob.gzip_bytes) > 2 * CHUNK_SIZE
    assert all(len(chunk(blob, i)) == CHUNK_SIZE for i in range(chunk_count(blob) - 1))
    assert 0 < len(chunk(blob, chunk_count(blob) - 1)) <= CHUNK_SIZE
    stream = _reassemble(blob)
    assert stream == blob.gzip_bytes
    assert hashlib.sha256(stream).hexdigest() == blob.sha256


def test_the_builtin_default_is_a_realistic_document() -> None:
    document = orjson.loads(gzip.decompress(parameters.builtin_parameters().gzip_bytes))
    assert document == builtin_document()
    raw_size = len(orjson.dumps(document))
    assert 200_000 < raw_size < 2_000_000  # a few hundred KB of JSON
    bins = document["bin_table"]
    assert len(bins["rows"]) >= 2000 and bins["columns"][:3] == ["low", "high", "brand"]
    lows = [row[0] for row in bins["rows"]]
    assert lows == sorted(lows) and len(set(lows)) == len(lows)
    brands = {row[2] for row in bins["rows"]}
    assert {"visa", "mastercard", "amex", "discover", "jcb", "unionpay"} <= brands
    assert len(document["messages"]) >= 5 and document["messages"]["en"]["APPROVED"] == "Approved"
    assert {
        "hosts",
        "aid_parameters",
        "currency_table",
        "receipt_templates",
        "exception_file",
    } <= document.keys()


def test_gzip_is_deterministic() -> None:
    document = {"b": [1, 2, 3], "a": {"z": "ü", "y": None}}
    first, second = pack(document), pack({"a": {"y": None, "z": "ü"}, "b": [1, 2, 3]})
    assert first == second  # same document, key order aside: same bytes
    assert first.gzip_bytes[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no name
    assert first.gzip_bytes[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert pack(builtin_document()) == parameters.builtin_parameters()
    assert orjson.loads(gzip.decompress(first.gzip_bytes)) == document


def test_chunk_index_out_of_range() -> None:
    blob = pack({"small": True})
    assert chunk_count(blob) == 1 and chunk(blob, 0) == blob.gzip_bytes
    for index in (-1, 1, 10**6):
        with pytest.raises(InvalidRequest):
            chunk(blob, index)


def test_only_json_objects_are_documents() -> None:
    for document in ([1, 2], "text", 3):
        with pytest.raises(InvalidRequest):
            pack(document)  # type: ignore[arg-type]


# --- storage and fallback, on both backends -------------------------------------------------


async def _terminal(runtime: Any) -> Terminal:
    device_id = f"POS-{secrets.token_hex(4).upper()}"
    terminal_id = f"TID-{secrets.randbelow(10**6):06d}"
    async with runtime.sessions() as db, db.begin():
        merchant = await service.create_merchant(
            db,
            name="Params shop",
            currency="USD",
            country="US",
            timezone="UTC",
            actor=Actor.operator(),
            now=NOW,
        )
        db.add(
            Device(
                device_id=device_id,
                status=DeviceStatus.claimed,
                disabled=False,
                created_at=NOW,
                merchant_id=merchant.merchant_id,
                terminal_id=terminal_id,
                claimed_at=NOW,
            )
        )
        await db.flush()
        terminal = Terminal(
            terminal_id=terminal_id,
            device_id=device_id,
            merchant_id=merchant.merchant_id,
            currency="USD",
            created_at=NOW,
        )
        db.add(terminal)
    return terminal


async def test_own_document_wins_and_default_falls_back(runtime: Runtime) -> None:
    terminal = await _terminal(runtime)
    async with runtime.sessions() as db:
        default_row = await db.get(TerminalParameters, DEFAULT_KEY)
        expected_default = (
            ParametersBlob(default_row.gzip, default_row.size, default_row.sha256)
            if default_row
            else parameters.builtin_parameters()
        )
        assert await parameters.parameters_for(db, terminal.terminal_id) == expected_default
    document = {"terminal": terminal.terminal_id, "hosts": [{"address": "h1.example", "port": 443}]}
    async with runtime.sessions() as db, db.begin():
        stored = await parameters.set_parameters(
            db,
            terminal_id=terminal.terminal_id,
            document=document,
            actor=Actor.operator("ops"),
            now=NOW,
        )
    assert stored == pack(document)
    async with runtime.sessions() as db:
        assert await parameters.parameters_for(db, terminal.terminal_id) == stored
        event = await db.scalar(
            select(AuditEvent).where(
                AuditEvent.type == "terminal_parameters.updated",
                AuditEvent.subject_id == terminal.terminal_id,
            )
        )
        assert event is not None and event.merchant_id == terminal.merchant_id
        assert event.data == {"scope": "terminal", "size": stored.size, "sha256": stored.sha256}
        assert (event.actor_type, event.actor_id, event.subject_type) == (
            "operator",
            "ops",
            "terminal",
        )
    # Another document replaces it; the same document again changes nothing.
    async with runtime.sessions() as db, db.begin():
        replaced = await parameters.set_parameters(
            db, terminal_id=terminal.terminal_id, document={"v": 2}, actor=Actor.operator(), now=NOW
        )
        await parameters.set_parameters(
            db, terminal_id=terminal.terminal_id, document={"v": 2}, actor=Actor.operator(), now=NOW
        )
    async with runtime.sessions() as db:
        assert await parameters.parameters_for(db, terminal.terminal_id) == replaced
        events = (
            await db.scalars(
                select(AuditEvent).where(
                    AuditEvent.type == "terminal_parameters.updated",
                    AuditEvent.subject_id == terminal.terminal_id,
                )
            )
        ).all()
        assert len(events) == 2


async def test_unknown_or_released_terminals_are_not_found(runtime: Runtime) -> None:
    terminal = await _terminal(runtime)
    async with runtime.sessions() as db, db.begin():
        with pytest.raises(NotFound):
            await parameters.set_parameters(
                db, terminal_id="TID-NOPE", document={}, actor=Actor.operator(), now=NOW
            )
        row = present(await db.get(Terminal, terminal.terminal_id))
        row.retired_at = NOW
    async with runtime.sessions() as db, db.begin():
        with pytest.raises(NotFound):
            await parameters.set_parameters(
                db, terminal_id=terminal.terminal_id, document={}, actor=Actor.operator(), now=NOW
            )


# --- HTTP and CLI ---------------------------------------------------------------------------


async def test_admin_upload(runtime: Runtime, admin: Admin, make_merchant: MakeMerchant) -> None:
    terminal = await _terminal(runtime)
    path = f"/admin/terminals/{terminal.terminal_id}/parameters"
    # Over the 64 KiB limit of other endpoints, well under the 8 MiB of this one.
    document = {
        "bin_table": [{"low": f"{i:08d}", "issuer": secrets.token_hex(8)} for i in range(4000)]
    }
    response = admin.http.put(path, json=document)
    assert response.status_code == 200, response.text
    blob = pack(document)
    assert response.json() == {
        "terminal_id": terminal.terminal_id,
        "size": blob.size,
        "sha256": blob.sha256,
    }
    async with runtime.sessions() as db:
        assert await parameters.parameters_for(db, terminal.terminal_id) == blob

    missing = admin.http.put("/admin/terminals/TID-NOPE/parameters", json={})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    for body in (b"[1, 2]", b"{not json"):
        bad = admin.http.put(path, content=body, headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"
    plain = admin.http.put(path, content=b"{}", headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    too_big = admin.http.put(
        path, content=b" " * (8 * 1024 * 1024 + 1), headers={"content-type": "application/json"}
    )
    assert too_big.status_code == 413
    owner = make_merchant()
    forbidden = owner.http.put(path, json={})
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"


async def test_cli_set_and_set_default(runtime: Runtime, backend: Backend, tmp_path: Path) -> None:
    terminal = await _terminal(runtime)
    file = tmp_path / "params.json"
    file.write_bytes(orjson.dumps({"acquirer": {"name": "CLI acquirer"}}))
    done = backend.cli("terminal-parameters", "set", terminal.terminal_id, str(file))
    blob = pack({"acquirer": {"name": "CLI acquirer"}})
    assert done == {"terminal_id": terminal.terminal_id, "size": blob.size, "sha256": blob.sha256}
    # The operator default, set to the built-in document: every other terminal of the shared
    # test database keeps getting the same bytes.
    builtin = tmp_path / "default.json"
    builtin.write_bytes(orjson.dumps(builtin_document()))
    default = backend.cli("terminal-parameters", "set-default", str(builtin))
    expected = parameters.builtin_parameters()
    assert default == {"terminal_id": None, "size": expected.size, "sha256": expected.sha256}
    other = await _terminal(runtime)
    async with runtime.sessions() as db:
        assert await parameters.parameters_for(db, other.terminal_id) == expected
        assert await parameters.parameters_for(db, terminal.terminal_id) == blob
