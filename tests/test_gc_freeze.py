"""The server freezes what start-up made out of the garbage collector's reach, once per process
(``viopay.app.freeze_startup_objects``; the figures are in its docstring). Run in a fresh
interpreter: the test process may have frozen already."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from viopay.app import freeze_startup_objects
assert gc.get_freeze_count() == 0
freeze_startup_objects()
first = gc.get_freeze_count()
objects = [[i] for i in range(1000)]  # made after start-up: still the collector's
freeze_startup_objects()  # once per process: a second app does not freeze again
print(first, gc.get_freeze_count())
"""


def test_start_up_objects_are_frozen_once() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    first, second = (int(n) for n in done.stdout.split())
    assert first > 10_000  # the modules, the ORM's mappers and FastAPI's routes, at least
    assert second == first
