"""Runs last: the logs of every server process of this run hold no secret the tests saw.

Identity secrets, client secrets and tokens (and, as later issues add them, keys, PANs, track
data and PIN blocks) are registered in ``conftest.SEEN_SECRETS`` as the tests meet them.
"""

from __future__ import annotations

import httpx

from helpers import SEEN_SECRETS, SERVER_LOGS, pos_headers


def test_logs_hold_no_secret(server, admin, make_merchant):
    # Make sure this backend's log has a whole steps 1-4 run in it, even when run alone.
    device = admin.provision()
    code = httpx.post(f"{server.url}/pos/pairing-code", headers=pos_headers(device.device_id)).json()["pairing_code"]
    SEEN_SECRETS.add(code)
    assert make_merchant().http.post("/pos/claim", json={"pairing_code": code}).status_code == 200
    logs = [path for path in SERVER_LOGS if path.exists()]
    assert logs and SEEN_SECRETS
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    assert '"path": "/pos/claim"' in text  # the log is really being written
    leaked = [s[:6] + "…" for s in SEEN_SECRETS if len(s) >= 6 and s in text]
    assert not leaked, f"secrets found in server logs: {leaked}"
