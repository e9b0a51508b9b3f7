"""Prometheus metrics of the server (``GET /metrics``): what the stores and the processor cost.

``origin`` tells request work from background work (recovery), so a request's cost can be read
off the counters: a keyed charge is two database transactions and one Redis round trip.
"""

from __future__ import annotations

from contextvars import ContextVar

from prometheus_client import Counter, Histogram

# "request" unless a background task (recovery) set it for its own work.
ORIGIN: ContextVar[str] = ContextVar("viopay_origin", default="request")

DB_TRANSACTIONS = Counter(
    "viopay_db_transactions", "Database transactions begun (reads included).", ["origin"]
)
CACHE_ROUNDTRIPS = Counter(
    "viopay_cache_roundtrips", "Redis round trips (a pipeline or script is one).", ["origin"]
)
PROCESSOR_CALLS = Histogram(
    "viopay_processor_call_seconds",
    "Processor calls by operation and result.",
    ["operation", "result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECOVERED = Counter(
    "viopay_intents_recovered", "Payment intents finished by recovery (§4.7).", ["outcome"]
)


def count_transaction() -> None:
    DB_TRANSACTIONS.labels(ORIGIN.get()).inc()


def count_roundtrip() -> None:
    CACHE_ROUNDTRIPS.labels(ORIGIN.get()).inc()
