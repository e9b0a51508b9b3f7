"""A sampling profile of a server worker under load (py-spy), summarised by where the time goes:
framework, JSON and validation, crypto, the database, Redis, logging, the application's own code.

py-spy writes collapsed stacks (``frame;frame;... count``, each frame ``function (file:line)``).
Samples of threads that only wait for work are dropped. Each sample is charged to the category of its innermost frame that belongs to one (*self*), and
to every category on its stack (*inclusive*, so inclusive shares add up to more than 100 %).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")

#: (category, path fragments); the first match wins, so the specific come first.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "json+validation",
        (
            "viopay/crypto/canonical",
            "orjson",
            "json/",
            "pydantic",
            "rfc8785",
            "viopay/device/_json",
            "viopay/deps.py",
        ),
    ),
    (
        "crypto",
        (
            "cryptography/",
            "viopay/crypto/",
            "hmac.py",
            "hashlib",
            "psec/",
            "secrets.py",
            "base64.py",
        ),
    ),
    ("database", ("sqlalchemy/", "asyncpg/", "aiosqlite/", "sqlite3/")),
    ("redis", ("redis/",)),
    ("logging", ("structlog/", "logging/")),
    (
        "framework",
        (
            "fastapi/",
            "starlette/",
            "uvicorn/",
            "httptools",
            "anyio/",
            "h11/",
            "viopay/middleware.py",
        ),
    ),
    ("event loop", ("asyncio/", "uvloop", "selectors.py", "concurrent/")),
    ("application", ("viopay/",)),
)


#: Innermost frames of a thread that waits for work (py-spy does not always see them as idle):
#: anyio's and concurrent.futures' worker threads, and a loop blocked in select/epoll.
IDLE_LEAVES = (
    ("Condition.wait", "threading.py"),
    ("Queue.get", "queue.py"),
    ("_worker", "concurrent/futures/thread.py"),
    ("select", "selectors.py"),
)


def _idle(frames: list[tuple[str, str]]) -> bool:
    func, file = frames[-1]
    return any(func == f and file.endswith(p) for f, p in IDLE_LEAVES)


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter (the ``bench`` extra), or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def record(pid: int, *, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """Start py-spy on ``pid`` for ``seconds`` (collapsed stacks to ``out``); returns the process."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy not found: install the bench extra (pip install -e '.[bench]')")
    return subprocess.Popen(  # noqa: S603 - a fixed argv: py-spy on our own server
        [
            exe,
            "record",
            "-p",
            str(pid),
            "-d",
            str(max(1, int(seconds))),
            "-r",
            str(rate),
            "-f",
            "raw",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for part in stack.split(";"):
        match = _FRAME.match(part)
        frames.append((match["func"], match["file"]) if match else (part, ""))
    return frames


def category_of(path: str) -> str | None:
    for name, fragments in CATEGORIES:
        if any(fragment in path for fragment in fragments):
            return name
    return None


def summarise(collapsed: Path, *, top: int = 15) -> dict[str, Any]:
    """Shares of CPU samples by category (self and inclusive) and the top functions."""
    self_by: Counter[str] = Counter()
    incl_by: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    app_incl: Counter[str] = Counter()
    total = idle = 0
    for raw in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if _idle(frames):
            idle += count
            continue
        total += count
        cats = [category_of(file) for _, file in frames]
        own = next((c for c in reversed(cats) if c is not None), "other")
        self_by[own] += count
        for cat in set(c for c in cats if c is not None):
            incl_by[cat] += count
        func, file = frames[-1]
        leaf[f"{func} ({file})"] += count
        for func, file in set(frames):
            if (
                file.startswith("viopay/")
                and "viopay/cli/" not in file
                and file != "viopay/__main__.py"
            ):
                app_incl[f"{func} ({file})"] += count
    if total == 0:
        return {"samples": 0, "idle_samples_dropped": idle}

    def share(counter: Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in counter.most_common()}

    return {
        "samples": total,
        "idle_samples_dropped": idle,
        "self_pct": share(self_by),
        "inclusive_pct": share(incl_by),
        "top_self": [
            {"function": k, "pct": round(100 * v / total, 1)} for k, v in leaf.most_common(top)
        ],
        "top_viopay_inclusive": [
            {"function": k, "pct": round(100 * v / total, 1)} for k, v in app_incl.most_common(top)
        ],
    }
