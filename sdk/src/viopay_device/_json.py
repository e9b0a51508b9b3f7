"""Typed reading of JSON members from the server."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from viopay_device.errors import ProtocolError


def loads_object(content: bytes, what: str) -> dict[str, Any]:
    """Parse ``content`` as a JSON object, or raise ProtocolError."""
    try:
        value = json.loads(content)
    except ValueError:  # not JSON, or not UTF-8
        raise ProtocolError(f"{what}: not valid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: expected a JSON object")
    return value


class Fields:
    """Typed access to the members of one JSON object; failures name the member, not values."""

    def __init__(self, obj: object, what: str) -> None:
        if not isinstance(obj, Mapping):
            raise ProtocolError(f"{what}: expected a JSON object")
        self._obj: Mapping[str, Any] = obj
        self._what = what

    def _fail(self, name: str, expected: str) -> ProtocolError:
        return ProtocolError(f"{self._what}: member {name!r} must be {expected}")

    def text(self, name: str) -> str:
        value = self._obj.get(name)
        if not isinstance(value, str):
            raise self._fail(name, "a string")
        return value

    def opt_text(self, name: str) -> str | None:
        return None if self._obj.get(name) is None else self.text(name)

    def integer(self, name: str, default: int | None = None) -> int:
        value = self._obj.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(name, "an integer")
        return value

    def flag(self, name: str, default: bool | None = None) -> bool:
        value = self._obj.get(name, default)
        if not isinstance(value, bool):
            raise self._fail(name, "a boolean")
        return value

    def time(self, name: str) -> datetime:
        try:
            value = datetime.fromisoformat(self.text(name))
        except ValueError:
            raise self._fail(name, "an RFC 3339 time") from None
        if value.tzinfo is None:
            raise self._fail(name, "an RFC 3339 time with a zone")
        return value

    def opt_time(self, name: str) -> datetime | None:
        return None if self._obj.get(name) is None else self.time(name)

    def mapping(self, name: str) -> Mapping[str, Any]:
        value = self._obj.get(name)
        if not isinstance(value, Mapping):
            raise self._fail(name, "an object")
        return value

    def raw(self, name: str) -> object:
        return self._obj.get(name)

    def opt_mapping(self, name: str) -> Mapping[str, Any] | None:
        return None if self._obj.get(name) is None else self.mapping(name)


def dumps(value: object) -> bytes:
    """Compact UTF-8 JSON (no spaces, no escaping beyond what JSON requires)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
