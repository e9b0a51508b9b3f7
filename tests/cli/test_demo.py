"""`viopay-tools demo`: the whole flow on an embedded server it starts, and the pair-only mode."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from support.helpers import SEEN_SECRETS, Backend, MakeMerchant, Server, present


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
        "charge (declined)",
        "refund 5.00",
    ):
        assert f"✓ {step}" in out, step
    assert re.search(r"approved 00 visa", out) and "declined 05 card_declined" in out
    assert "partially_refunded, refunded 500" in out and "Done in" in out
    assert not (tmp_path / "var").exists()  # it kept its data in a scratch folder


def test_demo_pair_only_waits_for_a_person(
    backend: Backend, server: Server, make_merchant: MakeMerchant
) -> None:
    env = {**os.environ, **backend.env, "COLUMNS": "200"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "viopay_tools", "demo", "--server", server.url, "--pair-only"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    owner = make_merchant()
    seen: list[str] = []
    code: list[str] = []

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            seen.append(line)
            match = re.search(r"\b([A-HJKMNP-Z2-9]{3}) ([A-HJKMNP-Z2-9]{3})\b", line)
            if match and not code:
                code.append(match[1] + match[2])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for _ in range(300):
        if code:
            break
        threading.Event().wait(0.1)
    assert code, "".join(seen)
    SEEN_SECRETS.add(code[0])
    claimed = owner.http.post("/pos/claim", json={"pairing_code": code[0]})
    assert claimed.status_code == 200, claimed.text
    assert demo.wait(timeout=60) == 0
    reader.join(timeout=5)
    present(demo.stdout).close()
    text = "".join(seen)
    assert "claimed" in text and claimed.json()["terminal_id"] in text
    assert "charge" not in text  # it stopped after pairing
