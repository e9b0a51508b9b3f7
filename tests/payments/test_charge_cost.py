"""What a charge costs the stores (issue: the payment core), read off a real server's
``/metrics``: a keyed charge is two database transactions (claim + intent, then outcome) and one
Redis round trip (the nonce) on PostgreSQL + Redis; on the embedded default, two transactions and
no network at all. Background work (recovery) is counted apart (``origin="background"``), and so
is the sandbox processor's own ledger write (``origin="processor"``: a real acquirer's work
happens on its side)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import charge_kit as kit
from support.helpers import Admin, Backend, MakeMerchant, Server, counter_by_label
from viopay.runtime import Runtime


@pytest.fixture
def quiet_server(backend: Backend, tmp_path: Path) -> Iterator[Server]:
    """A server of its own, so no other test's request is counted."""
    server = Server(backend, tmp_path, "cost")
    yield server
    server.stop()


def counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("origin") == "request":
                found[sample.name] = sample.value
    return found


def spent(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0) - before.get(name, 0)


@pytest.mark.parametrize("kind", ["approved", "declined"])
def test_a_keyed_charge_is_two_transactions_and_one_redis_round_trip(
    terminal: kit.PosTerminal, quiet_server: Server, backend: Backend, kind: str
) -> None:
    card = {
        "pan": "4242424242424242" if kind == "approved" else "4000000000000002",
        "expiry": "3012",
    }
    terminal.charge(500, idempotency_key=f"warm-{kind}", url=quiet_server.url)  # caches warm
    before = counters(quiet_server.url)
    answer = terminal.charge(700, idempotency_key=f"cost-{kind}", card=card, url=quiet_server.url)
    after = counters(quiet_server.url)
    assert answer.status == 201 and answer.json()["status"] == kind
    assert spent(before, after, "viopay_db_transactions_total") == 2
    redis = 1 if backend.name == "postgres" else 0
    assert spent(before, after, "viopay_cache_roundtrips_total") == redis


def test_a_replay_and_a_get_are_one_transaction(
    terminal: kit.PosTerminal, quiet_server: Server
) -> None:
    made = terminal.charge(500, idempotency_key="cost-replay", url=quiet_server.url).json()
    before = counters(quiet_server.url)
    assert terminal.charge(500, idempotency_key="cost-replay", url=quiet_server.url).status == 200
    assert terminal.get(made["id"], url=quiet_server.url).status == 200
    after = counters(quiet_server.url)
    assert spent(before, after, "viopay_db_transactions_total") == 2  # one each


@pytest.fixture
def small_cache_server(backend: Backend, tmp_path: Path) -> Iterator[Server]:
    """A server whose per-process terminal cache holds two terminals."""
    small = Backend(backend.name, {**backend.env, "VIOPAY_TERMINAL_CACHE_SIZE": "2"})
    server = Server(small, tmp_path, "small-cache")
    yield server
    server.stop()


async def test_a_fleet_as_large_as_the_terminal_cache_keeps_two_transactions_a_charge(
    terminal: kit.PosTerminal,
    small_cache_server: Server,
    backend: Backend,
    server: Server,
    admin: Admin,
    make_merchant: MakeMerchant,
    runtime: Runtime,
) -> None:
    """VIOPAY_TERMINAL_CACHE_SIZE sizes the remembered lookups and the unwrapped keys together:
    as many terminals as it names, charging in turn, each find their row *and* their keys (a
    key cache smaller than the lookups' made every such charge read its keys in a transaction
    of its own: three). One terminal more and nothing is remembered: each charge then
    authenticates afresh inside its first transaction, still two."""
    url = small_cache_server.url
    second = await kit.activated_terminal(server, admin, make_merchant, runtime)
    third = await kit.activated_terminal(server, admin, make_merchant, runtime)
    try:
        for n, pos in enumerate((terminal, second)):  # both remembered
            assert pos.charge(500, idempotency_key=f"fit-warm-{n}", url=url).status == 201
        looked_up = counter_by_label(url, "viopay_terminal_lookups", "source")
        for n, pos in enumerate((terminal, second, terminal, second)):
            before = counters(url)
            assert pos.charge(600, idempotency_key=f"fit-{n}", url=url).status == 201
            assert spent(before, counters(url), "viopay_db_transactions_total") == 2, n
        if backend.name == "postgres":
            now = counter_by_label(url, "viopay_terminal_lookups", "source")
            assert now["remembered"] - looked_up.get("remembered", 0) == 4
        for n, pos in enumerate((third, terminal, second, third, terminal, second)):
            before = counters(url)
            assert pos.charge(700, idempotency_key=f"past-{n}", url=url).status == 201
            assert spent(before, counters(url), "viopay_db_transactions_total") == 2, n
    finally:
        second.close()
        third.close()
