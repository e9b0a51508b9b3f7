"""``viopay-tools demo --pair-only`` as a terminal's screen: a code that expires unclaimed is
replaced by a new one, shown at once, until a person claims the device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from viopay_device import PairingCodeExpired
from viopay_tools import demo


@dataclass
class Code:
    pairing_code: str


@dataclass
class Claimed:
    terminal_id: str = "TID-000042"
    merchant: Any = None


@dataclass
class Merchant:
    id: str
    name: str


@dataclass
class SlowMerchantTerminal:
    """A device whose first two codes expire before anyone types them."""

    expiring: int = 2
    issued: list[str] = field(default_factory=list)

    def request_pairing_code(self) -> Code:
        code = f"ABC{len(self.issued) + 2:03d}"[-6:]
        self.issued.append(code)
        return Code(code)

    def wait_until_claimed(self) -> Claimed:
        if len(self.issued) <= self.expiring:
            raise PairingCodeExpired("the pairing code expired")
        return Claimed(merchant=Merchant("mer_person", "Corner Coffee"))


def test_an_expired_code_is_renewed_until_a_person_claims(
    capsys: pytest.CaptureFixture[str],
) -> None:
    device = SlowMerchantTerminal()
    claimer = demo._wait_for_a_person(device, "http://127.0.0.1:8000")
    assert claimer == "mer_person"
    assert len(device.issued) == 3  # two expired, the third claimed
    out = capsys.readouterr().out
    assert out.count("the code expired unclaimed: a new one") == 2
    for code in device.issued:
        assert f"{code[:3]} {code[3:]}" in out  # every code was shown
    assert "claimed" in out and "TID-000042" in out
