"""verify_webhook against the reference implementation (standardwebhooks) and the spec's vector."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from viopay_device import WebhookVerificationError, verify_webhook

VECTOR = Path(__file__).resolve().parents[2] / "docs" / "vectors" / "webhook_signature.json"
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
BODY = b'{"id":"evt_1","type":"device.online","data":{}}'
NOW = 1_900_000_000


def signed(
    secret: str, *, stamp: int = NOW, msg_id: str = "evt_1", body: bytes = BODY
) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, tz=UTC), body.decode())
    return {"Webhook-Id": msg_id, "Webhook-Timestamp": str(stamp), "Webhook-Signature": signature}


def test_the_spec_vector() -> None:
    vector = json.loads(VECTOR.read_text())
    for case in vector["cases"]:
        headers = {
            "webhook-id": case["webhook_id"],
            "webhook-timestamp": str(case["webhook_timestamp"]),
            "webhook-signature": case["webhook_signature"],
        }
        event = verify_webhook(
            vector["secret"], body=case["body"], headers=headers, now=case["webhook_timestamp"]
        )
        assert event["id"] == case["webhook_id"]


def test_accepts_what_standardwebhooks_signs() -> None:
    assert (
        verify_webhook(SECRET, body=BODY, headers=signed(SECRET), now=NOW)["type"]
        == "device.online"
    )
    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    both = signed(SECRET) | {
        "Webhook-Signature": f"{signed(other)['Webhook-Signature']} {signed(SECRET)['Webhook-Signature']}"
    }
    assert verify_webhook(SECRET, body=BODY, headers=both, now=NOW)["id"] == "evt_1"


def test_and_standardwebhooks_agrees_on_what_we_reject() -> None:
    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    bad = [
        (BODY + b" ", signed(SECRET)),
        (BODY, signed(other)),
        (BODY, signed(SECRET, msg_id="evt_2") | {"Webhook-Id": "evt_1"}),
    ]
    for body, headers in bad:
        with pytest.raises(WebhookVerificationError):
            verify_webhook(SECRET, body=body, headers=headers, now=NOW)


@pytest.mark.parametrize("drop", ["Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"])
def test_missing_header(drop: str) -> None:
    headers = signed(SECRET)
    del headers[drop]
    with pytest.raises(WebhookVerificationError, match=drop.lower()):
        verify_webhook(SECRET, body=BODY, headers=headers, now=NOW)


def test_timestamp_tolerance() -> None:
    for stamp in (NOW - 301, NOW + 301):
        with pytest.raises(WebhookVerificationError, match="tolerance"):
            verify_webhook(SECRET, body=BODY, headers=signed(SECRET, stamp=stamp), now=NOW)
    headers = signed(SECRET) | {"Webhook-Timestamp": "soon"}
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify_webhook(SECRET, body=BODY, headers=headers, now=NOW)
    with pytest.raises(WebhookVerificationError, match="whsec_"):
        verify_webhook("not-a-secret", body=BODY, headers=signed(SECRET), now=NOW)
