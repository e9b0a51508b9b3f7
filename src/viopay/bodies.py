"""The JSON every request body and every envelope plaintext is read with (PROTOCOL §1).

One guard for all of them: JSON nested deeper than 32 levels, or holding a U+0000 in any
string or member name, is 400 ``invalid_request`` before anything reads it (PostgreSQL refuses
NUL in text, and the canonical JSON of a fingerprint recurses).
"""

from __future__ import annotations

from typing import Any

import orjson

from viopay.errors import InvalidRequest

MAX_DEPTH = 32


def check_json(value: Any) -> None:
    """InvalidRequest if ``value`` (parsed JSON) nests deeper than 32 levels or holds a NUL.

    Iterative: a hostile document cannot exhaust the stack."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidRequest("a JSON string holds a U+0000")
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise InvalidRequest(f"JSON is nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key, member in item.items():
                    if "\x00" in key:
                        raise InvalidRequest("a JSON member name holds a U+0000")
                    pending.append((member, depth + 1))
            else:
                pending.extend((member, depth + 1) for member in item)


def parse_json(raw: bytes | str, what: str = "body") -> Any:
    """``raw`` parsed and checked (:func:`check_json`); InvalidRequest when malformed."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"the {what} is not valid JSON") from None
    check_json(value)
    return value
