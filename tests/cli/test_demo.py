"""`viopay-tools demo`: the whole flow on an embedded server it starts, and the pair-only mode."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from support.helpers import SEEN_SECRETS, Backend, MakeMerchant, Server


def test_demo_runs_green_on_its_own_embedded_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIOPAY_")} | {"COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "viopay_tools", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for step in (
        "provision",
        "bootstrap",
        "pairing code",
        "claim",
        "attest",
        "keys",
        "config",
        "terminal parameters",
        "activate",
        "charge (approved)",
        "webhook received",
        "charge (declined)",
        "refund $5.00",
    ):
        assert f"✓ {step}" in out, step
    assert re.search(r"\$12\.50 approved 00 visa", out)
    assert "$9.90 declined 05 card_declined" in out
    assert "partially_refunded, refunded $5.00" in out and "Done in" in out
    assert re.search(r"charge\.created ch_\w+, signature verified", out)
    assert not (tmp_path / "var").exists()  # it kept its data in a scratch folder


def test_demo_pair_only_waits_for_a_person(
    backend: Backend, server: Server, make_merchant: MakeMerchant, tmp_path: Path
) -> None:
    """Its output goes to a file (``> file``), as an operator would send it: the code is there
    while the demo still waits (the output is not held back until it exits)."""
    env = {**os.environ, **backend.env, "COLUMNS": "200"}
    output = tmp_path / "demo.out"
    with output.open("w") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "viopay_tools", "demo", "--server", server.url, "--pair-only"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    owner = make_merchant()
    code: list[str] = []
    for _ in range(600):
        match = re.search(r"\b([A-HJKMNP-Z2-9]{3}) ([A-HJKMNP-Z2-9]{3})\b", output.read_text())
        if match:
            code.append(match[1] + match[2])
            break
        assert demo.poll() is None, output.read_text()
        threading.Event().wait(0.1)
    assert code, output.read_text()
    assert demo.poll() is None  # still waiting for a person, and the code is already written
    SEEN_SECRETS.add(code[0])
    claimed = owner.http.post("/pos/claim", json={"pairing_code": code[0]})
    assert claimed.status_code == 200, claimed.text
    assert demo.wait(timeout=120) == 0, output.read_text()
    text = output.read_text()
    assert "claimed" in text and claimed.json()["terminal_id"] in text
    # then on to activation and the payments, in the claimer's merchant (not the demo's own,
    # so no webhook endpoint is made for it)
    assert "✓ activate" in text and "✓ charge (approved)" in text, text
    assert "claimed into another merchant" in text
    charges = owner.http.get("/merchant/charges").json()["data"]
    assert {c["reference"] for c in charges} >= {"demo-1", "demo-2"}


def test_demo_with_an_existing_merchant_shows_its_payments_there(
    backend: Backend, server: Server, make_merchant: MakeMerchant, tmp_path: Path
) -> None:
    """``--merchant``: the merchant's own API (and so its portal) lists the demo's payments,
    and the demo's webhook endpoint is the merchant's."""
    owner = make_merchant()
    env = {**os.environ, **backend.env, "COLUMNS": "200"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "viopay_tools",
            "demo",
            "--server",
            server.url,
            "--merchant",
            owner.merchant_id,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"charge\.created ch_\w+, signature verified", done.stdout)
    charges = owner.http.get("/merchant/charges").json()["data"]
    assert {c["reference"] for c in charges} >= {"demo-1", "demo-2"}
    hooks = owner.http.get("/merchant/webhook-endpoints").json()["data"]
    assert len(hooks) == 1
