"""``GET /metrics`` after a flow (issue 17 #4): requests by route template and status, charges
by outcome and brand, idempotent replays, signature and nonce failures, on both backends.

Tests of one backend run one after another on one server, so the deltas are exact."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import charge_kit as kit
from support.helpers import SERVER_LOGS, Backend, Server, free_port

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
    assert ("viopay_webhook_backlog", frozenset()) in after  # measured at start, then every 15 s
    assert ("viopay_webhook_oldest_due_seconds", frozenset()) in after


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_workers_share_one_exposition(backend: Backend, tmp_path: Path) -> None:
    """With --workers 2 every worker writes under PROMETHEUS_MULTIPROC_DIR and /metrics sums
    them: the count of requests is exact whichever worker answered which request."""
    port = free_port()
    log = tmp_path / "workers.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "viopay", "serve", "--port", str(port), "--workers", "2"],
            env={**os.environ, **backend.env, "VIOPAY_DATA_DIR": str(tmp_path / "var")},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    SERVER_LOGS.append(log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert process.poll() is None, log.read_text()
            if log.read_text().count("Application startup complete") == 2:
                break
            threading.Event().wait(0.1)
        for _ in range(40):  # a new connection each: the kernel spreads them over the workers
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        after = samples(url)
        healthz = ("viopay_http_requests_total", "GET", "/healthz", "200")
        total = after[(healthz[0], frozenset(zip(("method", "route", "status"), healthz[1:])))]
        assert total == 40
        assert (
            len({p.name.rsplit("_", 1)[-1] for p in (tmp_path / "var" / "metrics").glob("*.db")})
            == 2
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
    # uvicorn's lines too are JSON (only serve's own two lines on stderr are text), and no
    # library warns (FastAPI's ORJSONResponse deprecation was one).
    text = log.read_text()
    own = ("data folder ", "schema at ")
    lines = [line for line in text.splitlines() if not line.startswith(own)]
    assert lines and all(line.startswith("{") for line in lines), text
    assert "Uvicorn running on" in text and "Warning" not in text
