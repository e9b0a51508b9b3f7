"""Prometheus metrics of the server (``GET /metrics``): requests, charges, the processor, the
stores, the guards (rate limits, signatures, nonces) and recovery. The README lists them with
example alerts.

``origin`` tells request work from background work (recovery), so a request's cost can be read
off the counters: a keyed charge is two database transactions and one Redis round trip.

Every call on the request path is O(1): label children are looked up in a dict of bound
children (prometheus-client's ``labels()`` takes a lock and builds a tuple each time).

With ``serve --workers N`` every worker writes its values under ``PROMETHEUS_MULTIPROC_DIR``
(set by ``serve``) and ``/metrics`` sums them (:func:`exposition`).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

# "request" unless a background task (recovery) set it for its own work.
ORIGIN: ContextVar[str] = ContextVar("viopay_origin", default="request")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

DB_TRANSACTIONS = Counter(
    "viopay_db_transactions", "Database transactions begun (reads included).", ["origin"]
)
CACHE_ROUNDTRIPS = Counter(
    "viopay_cache_roundtrips", "Redis round trips (a pipeline or script is one).", ["origin"]
)
PROCESSOR_CALLS = Histogram(
    "viopay_processor_call_seconds",
    "Processor calls by operation and result (ok, error, timeout).",
    ["operation", "result"],
    buckets=LATENCY_BUCKETS,
)
TERMINAL_LOOKUPS = Counter(
    "viopay_terminal_lookups",
    "How keyed charges on PostgreSQL authenticated their terminal: on the lookup row the process "
    "remembered (remembered) or on a fresh read (read); changed: a remembered row found changed "
    "(those are then read).",
    ["source"],
)
HEARTBEAT_LOOKUPS = Counter(
    "viopay_heartbeat_lookups",
    "How heartbeats on PostgreSQL authenticated their terminal: on the lookup row the process "
    "remembered, in one statement (remembered), or on a fresh read (read); changed: a "
    "remembered row found changed, or the device not online (those are then read).",
    ["source"],
)
DEVICE_READS = Counter(
    "viopay_device_reads",
    "How POST /pos/bootstrap, POST /pos/pairing-code, GET /pos/status and POST /pos/attest read "
    "their device on PostgreSQL: in one statement (quick: decided on it, the checks' refusals "
    "included) or through the fresh transaction (read: a write due, a drawn code value taken, "
    "or a refusal decided there in the §1 order).",
    ["route", "source"],
)
TOKEN_LOOKUPS = Counter(
    "viopay_token_lookups",
    "How terminal-parameters chunks on PostgreSQL authenticated their attestation token: on the "
    "context the process remembered (remembered) or on a fresh read (read); changed: a "
    "remembered context found changed or not applicable (those are then read).",
    ["source"],
)
LOOP_STALLS = Counter(
    "viopay_event_loop_stalls",
    "Times a process's event loop was held longer than VIOPAY_LOOP_STALL_MS (each is logged as "
    "event_loop_stalled, with the stack that held it).",
)
RECOVERED = Counter(
    "viopay_intents_recovered", "Payment intents finished by recovery (§4.7).", ["outcome"]
)
RECOVERY_BACKLOG = Gauge(
    "viopay_recovery_backlog",
    "Payment intents due for recovery (older than VIOPAY_RECOVERY_DELAY_SECONDS) at the last pass.",
    multiprocess_mode="max",
)
WEBHOOK_BACKLOG = Gauge(
    "viopay_webhook_backlog",
    "Webhook deliveries due now (pending, their time come, on an enabled endpoint) at the last "
    "measure (every 15 s per process).",
    multiprocess_mode="max",
)
WEBHOOK_OLDEST_DUE = Gauge(
    "viopay_webhook_oldest_due_seconds",
    "How long the oldest due webhook delivery has been due (0: none) at the last measure.",
    multiprocess_mode="max",
)
REQUESTS = Counter(
    "viopay_http_requests",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "viopay_http_request_duration_seconds",
    "HTTP request latency by method and route template, until the response is sent.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
CHARGES = Counter(
    "viopay_charges",
    "Charges stored, by outcome (approved, declined, reversed) and card brand.",
    ["outcome", "brand"],
)
IDEMPOTENT_REPLAYS = Counter(
    "viopay_idempotent_replays", "Answers replayed for a known Idempotency-Key (§4.5).", ["route"]
)
PROBLEMS = Counter("viopay_problems", "problem+json answers by error code (PROTOCOL §1).", ["code"])
RATE_LIMITED = Counter("viopay_rate_limited", "Requests refused by a rate limit (429).")
AUTH_FAILURES = Counter(
    "viopay_auth_failures",
    "Signed requests refused: bad signature, reused nonce, stale timestamp, unknown or revoked key.",
    ["reason"],
)
STORE_UNAVAILABLE = Counter(
    "viopay_store_unavailable", "Answers 503: the database or Redis did not answer (fail closed)."
)
SERVER_BUSY = Counter(
    "viopay_server_busy",
    "Answers 503 'the server is busy': no pooled connection came free in time, or PostgreSQL "
    "rolled back a conflict (capacity, not an outage).",
)

_AUTH_CODES = {
    "invalid_signature": "signature",
    "nonce_reused": "nonce",
    "timestamp_out_of_window": "timestamp",
    "unknown_key": "unknown_key",
    "key_revoked": "key_revoked",
    "unknown_terminal": "unknown_terminal",
}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def count_transaction() -> None:
    _child(DB_TRANSACTIONS, ORIGIN.get()).inc()


def count_roundtrip() -> None:
    _child(CACHE_ROUNDTRIPS, ORIGIN.get()).inc()


def observe_request(
    method: str, route: str, status: int, seconds: float, *, replayed: bool
) -> None:
    """One finished request. ``route`` is the template (``/pos/charge/{charge_id}``), never the
    path, so ids and probes cannot grow the series."""
    method = method if method in _METHODS else "other"
    _child(REQUESTS, method, route, str(status)).inc()
    _child(REQUEST_SECONDS, method, route).observe(seconds)
    if replayed:
        _child(IDEMPOTENT_REPLAYS, route).inc()


def count_problem(code: str, *, busy: bool = False) -> None:
    """Every problem+json answer, and the named series an operator alerts on (``busy``: a 503
    for capacity, :class:`viopay.errors.ServerBusy`, not for a store that did not answer)."""
    _child(PROBLEMS, code).inc()
    if code == "rate_limited":
        RATE_LIMITED.inc()
    elif busy:
        SERVER_BUSY.inc()
    elif code == "service_unavailable":
        STORE_UNAVAILABLE.inc()
    else:
        reason = _AUTH_CODES.get(code)
        if reason is not None:
            _child(AUTH_FAILURES, reason).inc()


def count_charge(outcome: str, brand: str) -> None:
    _child(CHARGES, outcome, brand).inc()


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def prepare_multiprocess(directory: Path) -> None:
    """Before ``--workers`` processes start: a fresh directory for their values, unless the
    operator chose one (``PROMETHEUS_MULTIPROC_DIR``)."""
    chosen = os.environ.get(MULTIPROC_ENV)
    target = Path(chosen) if chosen else directory
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.db"):  # values of a previous run's processes
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(target)


def process_exited() -> None:
    """A worker stops: its live gauges leave the sums."""
    if multiprocess():
        _multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def exposition() -> tuple[bytes, str]:
    """The text exposition: this process's registry, or every worker's under the
    multiprocess directory."""
    if multiprocess():
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
