"""The load generator: a raw HTTP/1.1 keep-alive client on asyncio + uvloop, in a process of its
own (optionally pinned to one core), sending requests that were fully built beforehand.

It does no crypto and no JSON while it times: a *plan* file holds the exact bytes of every
request (request line, headers with their signatures, body), length-prefixed. Two modes:

- ``closed``: ``connections`` connections each send the next request as soon as the previous
  answer arrived, for ``duration`` seconds (the peak throughput);
- ``open``: requests are due at fixed times, ``rate`` per second (the offered load); a due request
  goes out on an idle connection or waits for one, and its latency counts from the time it was
  due, so a server that falls behind is not hidden by the client waiting for it (no coordinated
  omission).

Run as ``python -m viopay_tools.bench.loadgen CONFIG.json``; the result is written as JSON to the
config's ``out`` path.
"""

from __future__ import annotations

import asyncio
import os
import resource
import struct
import sys
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

_LENGTH = struct.Struct("<I")


# --- plan files -----------------------------------------------------------------------------


def write_plan(path: Path, requests: list[bytes]) -> None:
    """Write raw requests, each as a 4-byte little-endian length and its bytes."""
    with path.open("wb") as out:
        for raw in requests:
            out.write(_LENGTH.pack(len(raw)))
            out.write(raw)


def read_plan(path: Path) -> list[bytes]:
    data = path.read_bytes()
    requests, offset = [], 0
    while offset < len(data):
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        requests.append(data[offset : offset + size])
        offset += size
    return requests


def build_request(
    method: str, target: str, *, host: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """The exact bytes of one HTTP/1.1 keep-alive request."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- percentiles ----------------------------------------------------------------------------


def percentiles(values: array[float] | list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max/mean in milliseconds (``values`` in seconds); None when empty."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)
    n = len(ordered)

    def pick(q: float) -> float:
        return round(ordered[min(n - 1, max(0, int(q * n + 0.5) - 1))] * 1000, 3)

    return {
        "p50": pick(0.50),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": round(ordered[-1] * 1000, 3),
        "mean": round(sum(ordered) / n * 1000, 3),
    }


# --- the client -----------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.due = 0.0  # when the request in flight was due (open) or sent (closed)
        self.busy = False
        self.closed = asyncio.get_running_loop().create_future()
        self.warming: asyncio.Future[int] | None = None  # a warm-up request's answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.warming is not None and not self.warming.done():
            self.warming.set_exception(ConnectionError("connection lost while warming up"))
        if self.busy:
            self.gen.failed(self, "connection lost")
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, raw: bytes, due: float) -> None:
        assert self.transport is not None
        self.busy = True
        self.due = due
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end])
        lowered = head.lower()
        at = lowered.find(b"\r\ncontent-length:")
        if at < 0:
            if b"transfer-encoding: chunked" in lowered:
                self.gen.failed(self, "chunked responses are not supported")
                return
            length = 0
        else:
            stop = lowered.find(b"\r\n", at + 2)
            length = int(lowered[at + 17 : stop if stop > 0 else None])
        total = end + 4 + length
        if len(buffer) < total:
            return
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        status = int(head[9:12])
        self.busy = False
        if self.warming is not None:
            self.warming.set_result(status)
            self.warming = None
            return
        self.gen.answered(self, status, head, body)


@dataclass
class _Generator:
    loop: asyncio.AbstractEventLoop
    requests: list[bytes]
    cycle: bool
    expect: int
    measure_from: float = 0.0
    measure_until: float = float("inf")
    next_index: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    statuses: dict[int, int] = field(default_factory=dict)
    in_window: int = 0
    failures: int = 0
    samples: list[str] = field(default_factory=list)
    idle: deque[_Connection] = field(default_factory=deque)
    backlog: deque[tuple[bytes, float]] = field(default_factory=deque)
    backlog_max: int = 0
    in_flight: int = 0
    last_done: float = 0.0
    mode: str = "closed"
    stop_at: float = float("inf")
    drained: asyncio.Event | None = None

    def take(self) -> bytes | None:
        if self.next_index >= len(self.requests):
            if not self.cycle:
                return None
            self.next_index = 0
        raw = self.requests[self.next_index]
        self.next_index += 1
        return raw

    def answered(self, conn: _Connection, status: int, head: bytes, body: bytes) -> None:
        now = time.perf_counter()
        self.in_flight -= 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status != self.expect and len(self.samples) < 5:
            self.samples.append((head + b"\r\n\r\n" + body[:600]).decode("latin-1"))
        if conn.due >= self.measure_from:
            self.latencies.append(now - conn.due)
        if self.measure_from <= now <= self.measure_until:
            self.in_window += 1
            self.last_done = now
        self._next(conn, now)

    def failed(self, conn: _Connection, why: str) -> None:
        self.in_flight -= 1
        self.failures += 1
        conn.busy = False
        if len(self.samples) < 5:
            self.samples.append(why)
        self._check_drained()

    def _next(self, conn: _Connection, now: float) -> None:
        if self.mode == "closed":
            if now < self.stop_at:
                raw = self.take()
                if raw is not None:
                    self.in_flight += 1
                    conn.send(raw, now)
                    return
        elif self.backlog:
            raw, due = self.backlog.popleft()
            self.in_flight += 1
            conn.send(raw, due)
            return
        self.idle.append(conn)
        self._check_drained()

    def _check_drained(self) -> None:
        if self.in_flight == 0 and not self.backlog and self.drained is not None:
            self.drained.set()

    def dispatch(self, raw: bytes, due: float) -> None:
        """Open loop: send on an idle connection, or queue until one is free."""
        while self.idle:
            conn = self.idle.popleft()
            if conn.transport is not None and not conn.transport.is_closing():
                self.in_flight += 1
                conn.send(raw, due)
                return
        self.backlog.append((raw, due))
        self.backlog_max = max(self.backlog_max, len(self.backlog))


async def _connect(
    loop: asyncio.AbstractEventLoop,
    gen: _Generator,
    host: str,
    port: int,
    n: int,
    warm: bytes | None,
) -> list[_Connection]:
    """Open ``n`` connections one at a time. With ``warm``, each sends that request and waits
    for its answer before the next opens: a burst of connects would sit in the accept queue
    until one worker of a multi-worker server woke up and took them all."""
    conns = []
    for _ in range(n):
        _, conn = await loop.create_connection(lambda: _Connection(gen), host, port)
        if warm is not None and conn.transport is not None:
            conn.warming = loop.create_future()
            waiting = conn.warming
            conn.transport.write(warm)
            await asyncio.wait_for(waiting, 30)
        conns.append(conn)
    return conns


async def _run(config: dict[str, Any], requests: list[bytes]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    mode = config.get("mode", "closed")
    gen = _Generator(
        loop, requests, bool(config.get("cycle")), int(config.get("expect", 200)), mode=mode
    )
    gen.drained = asyncio.Event()
    warm = config.get("warm")
    conns = await _connect(
        loop,
        gen,
        config["host"],
        int(config["port"]),
        int(config["connections"]),
        warm.encode("latin-1") if warm else None,
    )
    duration = float(config["duration"])
    warmup = float(config.get("warmup", 0))
    drain_timeout = float(config.get("drain_timeout", 30))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    clock = time.perf_counter
    start = clock()
    gen.measure_from = start + warmup
    gen.measure_until = start + warmup + duration
    unsent = 0
    if mode == "closed":
        gen.stop_at = gen.measure_until
        for conn in conns:
            gen._next(conn, start)
        await asyncio.sleep(max(0.0, gen.measure_until - clock()))
    else:
        gen.idle.extend(conns)
        rate = float(config["rate"])
        total = min(len(requests), int(rate * (warmup + duration)))
        unsent = int(rate * (warmup + duration)) - total
        index = 0
        gen.next_index = 0
        while index < total:
            now = clock()
            due_count = min(total, int((now - start) * rate) + 1)
            while index < due_count:
                gen.dispatch(requests[index], start + index / rate)
                index += 1
            gen.next_index = index
            if index < total:
                await asyncio.sleep(max(0.0, start + index / rate - clock()))
    window_end = clock()
    gen.stop_at = 0.0
    if gen.in_flight or gen.backlog:
        gen.drained.clear()
        gen._check_drained()
        try:
            await asyncio.wait_for(gen.drained.wait(), drain_timeout)
        except TimeoutError:
            pass
    lost = gen.in_flight + len(gen.backlog)
    end = clock()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    exhausted = mode == "closed" and not gen.cycle and gen.next_index >= len(requests)
    measured = min(window_end, gen.measure_until) - gen.measure_from
    if exhausted and gen.last_done:  # ran out of requests: the window ends at the last answer
        measured = min(measured, gen.last_done - gen.measure_from)
    unexpected = sum(n for status, n in gen.statuses.items() if status != gen.expect)
    return {
        "mode": mode,
        "connections": len(conns),
        "offered_rps": float(config["rate"]) if mode == "open" else None,
        "duration_s": round(measured, 3),
        "sent": sum(gen.statuses.values()) + gen.failures + lost,
        "completed": sum(gen.statuses.values()),
        "measured": gen.in_window,
        "rps": round(gen.in_window / measured, 1) if measured > 0 else 0.0,
        "latency_ms": percentiles(gen.latencies),
        "statuses": {str(k): v for k, v in sorted(gen.statuses.items())},
        "errors": unexpected + gen.failures + lost + unsent,
        "unanswered": lost,
        "unsent": unsent,
        "taken": len(requests) if gen.cycle else gen.next_index,
        "exhausted": exhausted,
        "backlog_max": gen.backlog_max,
        "generator_cpu_s": round(cpu, 3),
        "generator_cpu_util": round(cpu / (end - start), 3) if end > start else None,
        "error_samples": gen.samples,
    }


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Run one load phase in this process (the CLI runs it in a child process)."""
    cpu = config.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(cpu)})
    requests = read_plan(Path(config["plan"]))
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        runner = asyncio.run
    result: dict[str, Any] = runner(_run(config, requests))
    result["cpu"] = cpu
    result["started_at"] = time.time()
    return result


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    config = orjson.loads(Path(args[0]).read_bytes())
    result = run(config)
    Path(config["out"]).write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
