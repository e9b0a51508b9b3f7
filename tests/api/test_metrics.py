"""``GET /metrics`` after a flow (issue 17 #4): requests by route template and status, charges
by outcome and brand, idempotent replays, signature and nonce failures, on both backends.

Tests of one backend run one after another on one server, so the deltas are exact."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import charge_kit as kit
from helpers import Server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
DECLINED = {"pan": "4000000000000002", "expiry": "3012"}


def samples(url: str) -> Samples:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture
async def terminal(
    server: Server, admin: Any, make_merchant: Any, runtime: Any
) -> Iterator[kit.PosTerminal]:
    pos = await kit.activated_terminal(server, admin, make_merchant, runtime)
    yield pos
    pos.close()


def test_metrics_show_requests_charges_replays_and_refusals(
    terminal: kit.PosTerminal, server: Server
) -> None:
    before = samples(server.url)
    made = terminal.charge(700, idempotency_key="metrics-1")
    assert made.status == 201 and made.json()["status"] == "approved"
    assert terminal.charge(700, idempotency_key="metrics-1").status == 200  # a replay
    assert terminal.charge(700, card=DECLINED).json()["status"] == "declined"
    charge_id = made.json()["id"]
    nonce = kit.new_nonce()
    assert terminal.get(charge_id, nonce=nonce).status == 200
    assert terminal.get(charge_id, nonce=nonce).status == 401  # the nonce is spent
    assert terminal.get(charge_id, mac=bytes(32)).status == 401  # a wrong signature
    assert httpx.get(f"{server.url}/pos/charge/ch_{'x' * 20}/nowhere").status_code == 404
    after = samples(server.url)

    requests = "viopay_http_requests_total"
    assert delta(before, after, requests, method="POST", route="/pos/charge", status="201") == 2
    assert delta(before, after, requests, method="POST", route="/pos/charge", status="200") == 1
    route = "/pos/charge/{charge_id}"
    assert delta(before, after, requests, method="GET", route=route, status="200") == 1
    assert delta(before, after, requests, method="GET", route=route, status="401") == 2
    assert delta(before, after, requests, method="GET", route="unmatched", status="404") == 1
    latency = "viopay_http_request_duration_seconds_count"
    assert delta(before, after, latency, method="POST", route="/pos/charge") == 3
    charges = "viopay_charges_total"
    assert delta(before, after, charges, outcome="approved", brand="visa") == 1
    assert delta(before, after, charges, outcome="declined", brand="visa") == 1
    assert delta(before, after, "viopay_idempotent_replays_total", route="/pos/charge") == 1
    assert delta(before, after, "viopay_auth_failures_total", reason="nonce") == 1
    assert delta(before, after, "viopay_auth_failures_total", reason="signature") == 1
    assert delta(before, after, "viopay_problems_total", code="nonce_reused") == 1
    processor = "viopay_processor_call_seconds_count"
    assert delta(before, after, processor, operation="charge", result="ok") == 2
    assert ("viopay_recovery_backlog", frozenset()) in after
