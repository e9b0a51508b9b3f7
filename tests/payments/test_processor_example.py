"""docs/processors.md's example connector is real code: extracted from the page, it satisfies
the Processor interface, acts once per reference, answers lookups, and serves charges through a
real server (``VIOPAY_PROCESSOR``)."""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from support import charge_kit as kit
from support.helpers import ROOT, Backend, Server, present
from viopay.payments.cards import check_card
from viopay.payments.processors import AuthorizationRequest, ChargeRef, Processor


def example_source() -> str:
    page = (ROOT / "docs" / "processors.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    source: str = next(b for b in blocks if "def make_processor" in b)
    return source


def load_example() -> types.ModuleType:
    module = types.ModuleType("example_acquirer")
    exec(compile(example_source(), "docs/processors.md", "exec"), module.__dict__)
    return module


def request(amount: int, reference: str) -> AuthorizationRequest:
    return AuthorizationRequest(
        reference=reference,
        charge_id="ch_1",
        terminal_id="TID-1",
        merchant_id="mer_1",
        amount=amount,
        currency="USD",
        entry_mode="chip",
        card=check_card(pan="4242424242424242", expiry="3012", track2=None, cardholder_name=None),
        pin=None,
        emv=None,
        order_reference=None,
        now=datetime.now(UTC),
    )


async def test_the_example_is_a_processor_that_acts_once_per_reference() -> None:
    acquirer = load_example().make_processor(None)
    assert isinstance(acquirer, Processor)
    first = await acquirer.authorize(request(500, "vpr_a"))
    assert first.approved and await acquirer.authorize(request(500, "vpr_a")) is first
    assert not (await acquirer.authorize(request(200_000, "vpr_b"))).approved
    await acquirer.reverse(ChargeRef("ch_1", "TID-1", 500, "USD", "vpr_a"), reference="vpr_c")
    assert present(await acquirer.lookup("vpr_a")).undone
    assert await acquirer.lookup("vpr_never") is None


@pytest.fixture
def example_server(backend: Backend, tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "example_acquirer.py").write_text(example_source())
    env = {
        **backend.env,
        "VIOPAY_PROCESSOR": "example_acquirer:make_processor",
        "PYTHONPATH": str(tmp_path),
    }
    server = Server(Backend(backend.name, env), tmp_path, "example")
    yield server
    server.stop()


def test_a_server_charges_through_the_example(
    terminal: kit.PosTerminal, example_server: Server
) -> None:
    approved = terminal.charge(500, url=example_server.url).json()
    assert (approved["status"], approved["authorization_code"]) == ("approved", "A1B2C3")
    declined = terminal.charge(150_000, url=example_server.url).json()
    assert (declined["status"], declined["response_code"]) == ("declined", "61")
    assert terminal.reverse(approved["id"], url=example_server.url).json()["status"] == "reversed"
