"""The event-loop stall watch (``VIOPAY_LOOP_STALL_MS``, off by default).

A server process answers every request on one event loop: a call that blocks it (file or DNS
I/O, a synchronous library, a long computation) holds every request of the process meanwhile,
and shows only as a tail in the latency figures. The watch is a thread that asks the loop to run
a no-op every few milliseconds; when the loop takes longer than the threshold to get to it, the
thread samples where the loop's thread is at that moment and, once the loop is back, logs
``event_loop_stalled`` with how long it was held and that stack, and counts it
(``viopay_event_loop_stalls_total``).

The stack is function names, files and line numbers: never a variable's value, so never a
secret. A stall whose stack ends in the loop itself (no Python frame of ours or a library's) is
a process that did not get a CPU, not a blocking call. This watch found one: redis-py reading
the installed distributions for every new connection (:data:`viopay.cache.DRIVER_INFO`).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from viopay.metrics import LOOP_STALLS

log = structlog.get_logger("viopay.stalls")

#: Frames of the stack kept, innermost last: enough to name the blocking call and its caller.
STACK_DEPTH = 12


@dataclass(frozen=True)
class Stall:
    ms: float
    stack: list[str]  # "file:line function", innermost last


def log_stall(stall: Stall) -> None:
    LOOP_STALLS.inc()
    log.warning("event_loop_stalled", ms=stall.ms, stack=stall.stack)


def _short(filename: str) -> str:
    return filename.rsplit("site-packages/", 1)[-1].rsplit("/src/", 1)[-1]


def stack_of(thread_id: int) -> list[str]:
    frame = sys._current_frames().get(thread_id)  # noqa: SLF001 - what the thread runs now
    if frame is None:
        return []
    return [
        f"{_short(f.filename)}:{f.lineno} {f.name}"
        for f in traceback.extract_stack(frame, limit=STACK_DEPTH)
    ]


class StallWatch:
    """Watches the running loop of the thread that made it (make it on the loop's thread)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        threshold_ms: float,
        on_stall: Callable[[Stall], None] = log_stall,
    ) -> None:
        self._loop, self._on_stall = loop, on_stall
        self._threshold = threshold_ms / 1000
        self._period = min(self._threshold / 2, 0.05)
        self._loop_thread = threading.get_ident()
        self._stopping = threading.Event()
        self._answered = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="viopay-stall-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Called on the loop's thread, whose no-op cannot run meanwhile: wakes the watch
        instead, so the process stops at once (not after a threshold) and reports nothing."""
        self._stopping.set()
        self._answered.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            answered = self._answered = threading.Event()
            if self._stopping.is_set():  # stop() may have woken the previous one
                return
            asked = time.perf_counter()
            try:
                self._loop.call_soon_threadsafe(answered.set)
            except RuntimeError:  # the loop is closed
                return
            if not answered.wait(self._threshold):
                stack = stack_of(self._loop_thread)  # what holds the loop, at the threshold
                answered.wait()
                if self._stopping.is_set():
                    return
                held = time.perf_counter() - asked
                self._on_stall(Stall(ms=round(held * 1000, 1), stack=stack))
            self._stopping.wait(self._period)
