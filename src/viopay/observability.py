"""JSON logs (structlog) and Prometheus metrics.

Log lines carry only what is safe: methods, paths, statuses, ids. Never headers or bodies:
that is where keys, secrets, tokens, PANs and PIN blocks travel.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(
    *, level: str = "info", json: bool = True, stream: TextIO | None = None
) -> None:
    """JSON (or console) logs on ``stream``: stdout for the server, stderr for CLI commands
    (whose ``--json`` output owns stdout)."""
    stream = stream or sys.stdout
    numeric = getattr(logging, level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=numeric, stream=stream, format="%(message)s", force=True)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True
