"""The README's walkthrough runs as written (issue 17): every fenced block marked
``<!-- test:walkthrough -->``, in order, in one bash process, against a real server.

The shell starts in a fresh folder beside the checkout's virtualenv (``.venv`` linked in), with
the server's configuration in its environment as an operator's shell has it and ``BASE`` set to
the server's URL; Python blocks run as the README says (``python`` in that folder). A
placeholder, a wrong key id, a missing tool or a step that fails stops the script.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from support.helpers import ROOT, SEEN_SECRETS, Backend, Server

MARK = "<!-- test:walkthrough -->"
BLOCK = re.compile(r"^" + re.escape(MARK) + r"\n```(bash|python)\n(.*?)\n```", re.DOTALL | re.M)


def walkthrough_blocks(readme: str) -> list[tuple[str, str]]:
    blocks = [(m[1], m[2]) for m in BLOCK.finditer(readme)]
    marks = re.findall(r"^" + re.escape(MARK) + r"$", readme, re.M)
    assert len(blocks) == len(marks), "a marked block is not a ```bash or ```python fence"
    return blocks


def as_script(blocks: list[tuple[str, str]]) -> str:
    """One bash script: shell blocks as they are, Python blocks through ``python``."""
    parts = ["set -euo pipefail"]
    for number, (language, code) in enumerate(blocks):
        if language == "bash":
            parts.append(code)
        else:
            name = f"walkthrough_{number}.py"
            parts.append(f"cat > {name} <<'VIOPAY_PY'\n{code}\nVIOPAY_PY\npython {name}")
    return "\n".join(parts) + "\n"


def test_marked_blocks_are_found() -> None:
    blocks = walkthrough_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert [language for language, _ in blocks][:2] == ["bash", "python"]
    script = as_script([("bash", "echo 1"), ("python", "print(2)")])
    assert "echo 1\ncat > walkthrough_1.py <<'VIOPAY_PY'\nprint(2)\nVIOPAY_PY" in script


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_the_readme_walkthrough_runs_as_written(
    backend: Backend, server: Server, tmp_path: Path
) -> None:
    blocks = walkthrough_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VIOPAY_", "VIRTUAL_ENV"))}
    done = subprocess.run(
        ["bash", "-c", as_script(blocks)],
        cwd=tmp_path,
        env=clean | backend.env | {"BASE": server.url, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    for name in ("device.json", "owner.json"):
        if (tmp_path / "var" / name).exists():
            written = json.loads((tmp_path / "var" / name).read_text())
            SEEN_SECRETS.add(written.get("identity_secret") or written.get("client_secret"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    device = json.loads((tmp_path / "var" / "device.json").read_text())
    assert re.search(r"the terminal shows [A-HJKMNP-Z2-9]{6}\n", out)
    assert f'"device_id":"{device["device_id"]}","status":"claimed"' in out
    assert re.search(r"activated as TID-\d{6}\n", out)
    assert re.search(r"charge ch_\w+ approved 00\n", out)
    assert re.search(r"refund \w+ → partially_refunded\n", out)
    # The walkthrough's secrets stay under var/, the only folder it writes.
    assert {p.name for p in tmp_path.iterdir()} <= {".venv", "var", "walkthrough_1.py"}
    charges = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert re.search(r'viopay_charges_total\{brand="visa",outcome="approved"\} [1-9]', charges)
