"""The event-loop stall watch (``viopay.stalls``, ``VIOPAY_LOOP_STALL_MS``): a call that holds
the loop is reported once, with how long and the stack that held it; a report is a log line of
names and line numbers only, and a counted metric."""

from __future__ import annotations

import asyncio
import threading
import time

import structlog
from prometheus_client import REGISTRY

from viopay.runtime import Runtime
from viopay.stalls import Stall, StallWatch, log_stall


def _holds_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # a blocking call made on the loop, as a synchronous library would


def test_a_call_that_holds_the_loop_is_reported_with_its_stack() -> None:
    async def main() -> list[Stall]:
        seen: list[Stall] = []
        watch = StallWatch(asyncio.get_running_loop(), threshold_ms=100, on_stall=seen.append)
        watch.start()
        try:
            await asyncio.sleep(0.3)
            _holds_the_loop(0.6)
            await asyncio.sleep(0.4)  # the report comes once the loop is back
        finally:
            watch.stop()
        return seen

    seen = asyncio.run(main())
    held = [s for s in seen if any(f.endswith(" _holds_the_loop") for f in s.stack)]
    assert len(held) == 1, seen
    assert held[0].ms >= 400  # held 600 ms; the watch asks again within ~50 ms of the hold
    assert held[0].stack[-1].endswith(" _holds_the_loop")  # sampled while it held the loop
    assert "tests/test_stalls.py" in held[0].stack[-1]


def test_a_stall_is_logged_and_counted() -> None:
    def count() -> float:
        return REGISTRY.get_sample_value("viopay_event_loop_stalls_total") or 0.0

    before = count()
    with structlog.testing.capture_logs() as logs:
        log_stall(Stall(ms=123.4, stack=["viopay/cache.py:12 get"]))
    assert count() == before + 1
    assert logs == [
        {
            "event": "event_loop_stalled",
            "log_level": "warning",
            "ms": 123.4,
            "stack": ["viopay/cache.py:12 get"],
        }
    ]


async def test_the_server_watches_its_loop_when_asked(runtime: Runtime) -> None:
    from viopay.app import create_app

    def watching() -> bool:
        return any(t.name == "viopay-stall-watch" for t in threading.enumerate())

    app = create_app(runtime.settings.model_copy(update={"loop_stall_ms": 100}))
    with structlog.testing.capture_logs() as logs:
        async with app.router.lifespan_context(app):
            assert watching()
            _holds_the_loop(0.4)  # this test runs on the server's loop
            for _ in range(50):  # the report comes once the loop is back
                await asyncio.sleep(0.05)
                if any(e["event"] == "event_loop_stalled" for e in logs):
                    break
    assert not watching()  # stopped with the server
    stalled = [e for e in logs if e["event"] == "event_loop_stalled"]
    assert any(e["stack"][-1].endswith(" _holds_the_loop") for e in stalled), stalled
    plain = create_app(runtime.settings)  # off by default: no thread
    async with plain.router.lifespan_context(plain):
        assert not watching()
