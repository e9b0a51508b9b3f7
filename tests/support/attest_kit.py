"""Attest (PROTOCOL §2.2): signed attest headers of a provisioned device, and the request."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from support.helpers import ProvisionedDevice, signed_pos_headers


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


attest_headers = signed_pos_headers


def attest(http: httpx.Client, device: ProvisionedDevice, **kwargs: Any) -> httpx.Response:
    return http.post("/pos/attest", headers=attest_headers(device, **kwargs))
